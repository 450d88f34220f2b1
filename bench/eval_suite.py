"""An evaluation suite on five compressions of SmolLM2-135M, and MiniLM fp32 vs int8.

Rows: SmolLM2-135M fp32 (the reference, judged against itself), 8-bit RTN g64, 4-bit GPTQ g64,
Wanda 50 %, and a 15-block student (angular cut of the 30 blocks + a short KD+CE distillation);
then all-MiniLM-L6-v2 fp32 and 8-bit RTN on the ``encoder`` suite. For each model: every metric
with its gate verdict, the metric that moved most against the fp32 reference, and the suite's wall
time. The fp32 reference's answers are computed once, in the fp32 row, and shared (``memo``), so
later rows time the compressed model's side (plus the KL tail, which is always recomputed).

    python bench/eval_suite.py --markdown /tmp/results.md --json bench/results/eval_suite.json
    python bench/eval_suite.py --limit 2 --quick --distill-steps 2   # smoke (minutes)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # as the CLI: our table says enough
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from rich.console import Console
from rich.table import Table

from slimline.data import calibration_blocks, train_blocks
from slimline.distill import DistillConfig, angular_importance, drop_blocks, train
from slimline.eval import TorchEngine, run_suite
from slimline.metrics import direction
from slimline.models import load_model
from slimline.prune import Wanda, prune
from slimline.quant import Gptq, Rtn, quantize

QUICK = {
    "tail": {"windows": 1, "seq_len": 128},
    "domain": {"windows": 1, "seq_len": 128},
    "longctx": {"lengths": (512,), "n": 1},
}


def utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def moved_most(metrics: dict[str, float], ref: dict[str, float]) -> tuple[str, float] | None:
    """The metric whose value differs most, relatively, from the reference's on the same items
    (flips and KL are themselves differences from the reference: left out)."""
    # agreement with the reference (agree/top1, recall@k/teacher, spearman/teacher) is 1 for
    # the reference itself
    ref = {
        **{k: 1.0 for k in metrics if k.startswith("agree/") or "/teacher" in k},
        **ref,
    }
    ref = {k: v for k, v in ref.items() if not (k.startswith("kl/") or direction(k) is None)}
    rel = [
        (abs(metrics[k] / ref[k] - 1), k)
        for k in metrics
        if k in ref and ref[k] not in (0, 0.0) and direction(k) is not None  # not stderr/*
    ]
    if not rel or max(rel)[0] == 0:
        return None  # nothing moved (the reference against itself)
    r, k = max(rel)
    return k, r


def student_15(base: Any, steps: int, log: list[str]) -> Any:
    """SmolLM2 cut to 15 of 30 blocks (lowest angular importance on 8 x 128 calibration tokens)
    and distilled KD+CE (0.5 KL at T=1 + 0.5 CE) for ``steps`` AdamW steps of 4 x 128 tokens on
    python-docs blocks that never overlap the calibration windows: bench/distill.py's protocol."""
    tok = base.tokenizer
    calib = calibration_blocks(tok, n=8, seq_len=128)
    cut = drop_blocks(base, keep=15, importance=angular_importance(base, calib))
    if steps > 0:
        data = train_blocks(
            tok, "python-docs", seq_len=128, seed=0, exclude_calib=8, calib_seq_len=128
        )
        cfg = DistillConfig(
            losses={"kl": 0.5, "ce": 0.5},
            temperature=1.0,
            max_steps=steps,
            batch_size=4,
            seq_len=128,
            lr=3e-4,
            warmup_steps=max(1, steps // 10),
            schedule="cosine",
            seed=0,
            clip=1.0,
        )
        t0 = time.perf_counter()
        r = train(cut.model, base.model, data, cfg, tokenizer=tok)
        cut.model.eval()
        log.append(
            f"15-block student: blocks {cut.extra['student']['kept_blocks']}; {r.steps} steps, "
            f"{r.tokens} tokens, {time.perf_counter() - t0:.0f} s, loss {r.losses[0]:.3f} -> "
            f"{r.losses[-1]:.3f}"
        )
    return cut


def compressions(base: Any, args: argparse.Namespace, log: list[str]) -> Any:
    """(name, how it was made, model) one at a time, so at most two models are in memory."""
    yield "fp32", "SmolLM2-135M-Instruct fp32 (the reference)", base
    m = copy.deepcopy(base)
    quantize(m.model, Rtn(bits=8, group_size=64, ignore=["lm_head"]))
    yield "rtn-w8g64", "8-bit RTN, group 64, symmetric", m
    del m
    calib = calibration_blocks(
        base.tokenizer, "python-docs+shakespeare", n=args.calib, seq_len=512, seed=0
    )
    m = copy.deepcopy(base)
    t0 = time.perf_counter()
    quantize(m.model, Gptq(bits=4, group_size=64, symmetric=False, ignore=["lm_head"]), data=calib)
    log.append(f"GPTQ: {time.perf_counter() - t0:.0f} s on {args.calib} x 512 calibration tokens")
    yield "gptq-w4g64", f"4-bit GPTQ, group 64, asymmetric, {args.calib} x 512 calib", m
    del m
    m = copy.deepcopy(base)
    prune(m.model, Wanda(sparsity=0.5), data=calib)
    yield "wanda-50%", f"Wanda 50 % unstructured, {args.calib} x 512 calib", m
    del m
    m = student_15(base, args.distill_steps, log)
    yield (
        "student-15",
        f"15 of 30 blocks (angular cut) + KD+CE {args.distill_steps} steps x 4 x 128 tokens",
        m,
    )


def run(args: argparse.Namespace, save: Any = None) -> dict[str, Any]:
    """Every row; ``save(result)`` after each, so a run cut short keeps what it measured."""
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "suite": args.suite,
        "threads": args.threads,
        "utc_start": utc(),
        "load_start": os.getloadavg(),
        "rows": [],
        "log": [],
    }
    t_all = time.perf_counter()
    base = load_model("smollm2-135m")
    ref = TorchEngine(base)
    memo: dict = {}
    over = QUICK if args.quick else None
    for name, how, m in compressions(base, args, out["log"]):
        t0 = time.perf_counter()
        r = run_suite(
            m, suite=args.suite, reference=ref, overrides=over, limit=args.limit, memo=memo
        )
        out["rows"].append(row(name, how, r, time.perf_counter() - t0))
        print(f"{name}: {out['rows'][-1]['gates']} gates, {out['rows'][-1]['seconds']:.0f} s")
        if save:
            save(out)
    enc = load_model("minilm-l6")
    q = copy.deepcopy(enc)
    quantize(q.model, Rtn(bits=8, group_size=64))
    for name, how, m in (
        ("minilm fp32", "all-MiniLM-L6-v2 fp32 (the reference)", enc),
        ("minilm rtn-w8g64", "8-bit RTN, group 64, symmetric", q),
    ):
        t0 = time.perf_counter()
        r = run_suite(m, suite="encoder", reference=enc, limit=args.limit)
        out["rows"].append(row(name, how, r, time.perf_counter() - t0))
        if save:
            save(out)
    out["utc_end"] = utc()
    out["load_end"] = os.getloadavg()
    out["seconds_total"] = round(time.perf_counter() - t_all, 1)
    return out


def row(name: str, how: str, r: Any, seconds: float) -> dict[str, Any]:
    mm = moved_most(r.metrics, r.reference)
    return {
        "model": name,
        "how": how,
        "suite": r.suite,
        "gates": f"{sum(v['passed'] for v in r.verdicts)}/{len(r.verdicts)}",
        "failed": [v["metric"] for v in r.failed()],
        "moved_most": None if mm is None else {"metric": mm[0], "relative_change": mm[1]},
        "seconds": round(seconds, 1),
        "task_seconds": r.seconds,
        "metrics": r.metrics,
        "reference": r.reference,
        "verdicts": r.verdicts,
        "skipped": r.skipped,
    }


def _v(x: Any) -> str:
    if x is None:
        return "—"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def markdown(res: dict[str, Any]) -> str:
    """The summary table and the per-metric table (value, ✗ where a gate failed) as markdown."""
    rows = res["rows"]
    lines = [
        f"Suite `{res['suite']}` (SmolLM2) and `encoder` (MiniLM), torch, {res['threads']} threads, "
        f"{res['utc_start']} → {res['utc_end']}; load average (1/5/15 min) "
        f"{'/'.join(f'{x:.2f}' for x in res['load_start'])} at the start, "
        f"{'/'.join(f'{x:.2f}' for x in res['load_end'])} at the end.",
        "",
        "| model | made by | gates passed | failed gates | moved most vs fp32 (value / fp32) | suite s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mm = moved_most(r["metrics"], r["reference"])
        moved = "—"
        if mm:
            k = mm[0]
            moved = f"`{k}` {_v(r['metrics'][k])} / {_v(r['reference'].get(k, 1.0))}"
        failed = ", ".join(f"`{f}`" for f in r["failed"]) or "none"
        lines.append(
            f"| {r['model']} | {r['how']} | {r['gates']} | {failed} | {moved} | {r['seconds']:.0f} |"
        )
    for group, suite_rows in (
        ("SmolLM2-135M", [r for r in rows if not r["model"].startswith("minilm")]),
        ("MiniLM-L6", [r for r in rows if r["model"].startswith("minilm")]),
    ):
        if not suite_rows:
            continue
        failed = {
            (r["model"], v["metric"]) for r in suite_rows for v in r["verdicts"] if not v["passed"]
        }
        gated = {v["metric"]: v["gate"] for r in suite_rows for v in r["verdicts"]}
        keys = sorted({k for r in suite_rows for k in r["metrics"]})
        lines += [
            "",
            f"{group}: every metric (✗ = a gate failed on it; fp32 reference values on the same "
            "items are the `reference` column)",
            "",
            "| metric | gate | reference | " + " | ".join(r["model"] for r in suite_rows) + " |",
            "|---|---|---|" + "---|" * len(suite_rows),
        ]
        for k in keys:
            ref = next((r["reference"][k] for r in suite_rows if k in r["reference"]), None)
            cells = [
                _v(r["metrics"].get(k)) + (" ✗" if (r["model"], k) in failed else "")
                for r in suite_rows
            ]
            lines.append(f"| `{k}` | {gated.get(k, '')} | {_v(ref)} | " + " | ".join(cells) + " |")
        task_s = {t for r in suite_rows for t in r["task_seconds"]}
        lines += [
            "",
            "Seconds per task: "
            + "; ".join(
                f"{r['model']}: "
                + ", ".join(
                    f"{t} {r['task_seconds'][t]:.0f}"
                    for t in sorted(task_s)
                    if t in r["task_seconds"]
                )
                for r in suite_rows
            ),
        ]
    if res.get("seconds_total"):
        lines += ["", f"Whole script (model loads, GPTQ, Wanda, distillation, all suites): "
                  f"{res['seconds_total']:.0f} s."]  # fmt: skip
    if res["log"]:
        lines += ["", *(f"- {x}" for x in res["log"])]
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="default", help="suite for SmolLM2 (MiniLM: encoder)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="items per task (smoke runs)")
    p.add_argument("--quick", action="store_true", help="tiny windows and one short passkey")
    p.add_argument("--calib", type=int, default=32, help="512-token calibration windows")
    p.add_argument("--distill-steps", type=int, default=80, help="KD+CE steps of the student")
    p.add_argument("--markdown", help="write the tables here")
    p.add_argument("--json", help="write every number here")
    p.add_argument("--render", help="only print the markdown of an earlier run's --json")
    args = p.parse_args()
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())), end="")
        return

    def save(res: dict[str, Any]) -> None:
        res.setdefault("utc_end", "(running)")
        res.setdefault("load_end", os.getloadavg())
        if args.json:
            _write(args.json, json.dumps(res, indent=2, default=str) + "\n")
        if args.markdown:
            _write(args.markdown, markdown(res))

    res = run(args, save)
    save(res)
    table = Table(title=f"suite {args.suite} (torch, {args.threads} threads)")
    for col in ("model", "gates", "failed", "moved most", "seconds"):
        table.add_column(col)
    for r in res["rows"]:
        mm = r["moved_most"]
        table.add_row(
            r["model"],
            r["gates"],
            ", ".join(r["failed"]) or "-",
            f"{mm['metric']} ({mm['relative_change']:.1%} off)" if mm else "-",
            f"{r['seconds']:.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
