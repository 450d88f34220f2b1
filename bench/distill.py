"""Distillation benchmark (BENCH.md data): does KD recover a cut SmolLM2 better than plain
fine-tuning on the same tokens, and how close does a 3-layer MiniLM get to the 6-layer one?

    python bench/distill.py --profile                     # where one training step spends time
    python bench/distill.py --steps 32 --eval-windows 16  # SmolLM2 keep=20: KD vs CE, + MiniLM

Prints a side-by-side table: teacher (fp32), the cut student, student + KD, student + CE on
the same tokens (same steps, batch, lr, schedule); training tokens/s (curve evaluations
excluded); MiniLM 6 -> 3 cosine / retrieval agreement before and after. Writes the recovery
curve PNG and a JSON of every figure to bench/results/, the JSON after each part so a run cut
short keeps what it measured. Quality figures come from ``slimline.eval.evaluate``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from slimline.data import calibration_blocks, eval_blocks, sentences, train_blocks
from slimline.distill import (
    DistillConfig,
    LoopHook,
    Teacher,
    angular_importance,
    drop_blocks,
    train,
)
from slimline.distill import losses as L
from slimline.eval import evaluate
from slimline.models import load_model

RESULTS = Path(__file__).parent / "results"
MACHINE = "2-core AVX2 CPU VM"


def utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def ppl(model: torch.nn.Module, windows: dict[str, torch.Tensor]) -> dict[str, float]:
    """Perplexity per dataset through the one evaluator (``suite="ppl"``: no ECE/KL work)."""
    r = evaluate(model, data=windows, windows=10_000, suite="ppl", batch_size=4)
    return {k: round(v, 3) for k, v in r.items() if k.startswith("ppl/")}


class PplCurve(LoopHook):
    """Eval perplexity every ``every`` steps (the recovery curve); its time is kept apart so
    training tokens/s does not include evaluation."""

    name = "curve"

    def __init__(self, windows: dict[str, torch.Tensor], every: int):
        self.windows, self.every = windows, every
        self.points: list[tuple[int, float]] = []
        self.seconds = 0.0

    def _point(self, model: torch.nn.Module, step: int) -> None:
        t0 = time.perf_counter()
        value = next(iter(ppl(model, self.windows).values()))
        self.seconds += time.perf_counter() - t0
        self.points.append((step, value))
        print(f"  curve step {step}: ppl {value:.2f}", flush=True)

    def on_start(self, model: torch.nn.Module, step: int, max_steps: int) -> None:
        self.max_steps = max_steps
        self._point(model, 0)

    def after_step(self, model: torch.nn.Module, step: int) -> dict[str, Any] | None:
        if step % self.every == 0 or step == self.max_steps:
            self._point(model, step)
        return None


# --- where one training step spends its time ------------------------------------------------------


class _Clock:
    """Wall time of consecutive named parts of one step."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = now - self.t
        self.t = now


def profile_step(args: argparse.Namespace) -> dict[str, Any]:
    """Time the parts of one KD and one CE step (teacher forward under no_grad, student forward,
    loss, backward, clip + AdamW) on the real cut model, median of ``reps`` after a warm-up."""
    t = load_model("smollm2-135m")
    teacher = Teacher(t)
    data = train_blocks(t.tokenizer, "python-docs", seq_len=args.seq_len, seed=0)
    out: dict[str, Any] = {
        "keep": args.keep[0],
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "threads": args.threads,
        "utc": utc(),
    }
    for label in ("KD", "CE"):
        student = drop_blocks(t, keep=args.keep[0]).model.train()
        opt = torch.optim.AdamW(student.parameters(), lr=args.lr)
        parts: dict[str, list[float]] = {}
        for rep in range(args.profile_reps + 1):
            ids = data[rep * args.batch_size : (rep + 1) * args.batch_size]
            clock = _Clock()
            if label == "KD":
                t_logits = teacher(ids, None).logits
                clock.lap("teacher forward")
            s_logits = student(input_ids=ids).logits
            clock.lap("student forward")
            if label == "KD":
                loss = L.soft_kl(s_logits, t_logits, 1.0)
            else:
                loss = L.cross_entropy(s_logits, ids)
            clock.lap("loss")
            loss.backward()
            clock.lap("student backward")
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            clock.lap("clip + AdamW step")
            clock.times["total"] = sum(clock.times.values())
            if rep:  # rep 0 is the warm-up
                for k, v in clock.times.items():
                    parts.setdefault(k, []).append(v)
        med = {k: round(statistics.median(v), 3) for k, v in parts.items()}
        tokens = args.batch_size * args.seq_len
        out[label] = {"seconds": med, "tokens_per_s": round(tokens / med["total"], 1)}
        print(f"{label} step ({args.batch_size} x {args.seq_len} tokens):", flush=True)
        for k, v in med.items():
            print(f"  {k:20s} {v:7.3f} s  {100 * v / med['total']:5.1f} %", flush=True)
    return out


# --- SmolLM2: cut, then KD vs CE on the same tokens ----------------------------------------------


def bench_smollm2(
    args: argparse.Namespace, keep: int, sink: list[dict[str, Any]], save: Any
) -> dict[str, Any]:
    t = load_model("smollm2-135m")
    tok = t.tokenizer
    evals = {
        name: eval_blocks(tok, name, seq_len=512, max_blocks=args.eval_windows)
        for name in ("python-docs", "shakespeare")
    }
    curve_windows = {"python-docs": evals["python-docs"][: args.curve_windows]}
    # Training never sees a token of the calibration windows the cut is ranked on (8 x 128).
    data = train_blocks(
        tok, "python-docs", seq_len=args.seq_len, seed=0, exclude_calib=8, calib_seq_len=128
    )
    res: dict[str, Any] = {
        "keep": keep,
        "eval": f"{args.eval_windows} x 512 tokens per dataset",
        "curve_eval": f"python-docs, {args.curve_windows} x 512 tokens",
        "train_blocks": int(data.shape[0]),
        "rows": {},
        "curves": {},
        "utc_start": utc(),
    }
    sink.append(res)  # visible to `save` from the first row on

    def measure(name: str, model: torch.nn.Module, extra: dict[str, Any] | None = None) -> None:
        row: dict[str, Any] = ppl(model, evals)
        row["params"] = sum(p.numel() for p in model.parameters())
        row.update(extra or {})
        res["rows"][name] = row
        print(name, row, flush=True)
        save()

    reused = _reused_rows(args.reuse_rows, res["eval"], keep)
    res["reused_from"] = reused.pop("_from", None)
    teacher_name = "teacher fp32 (30 blocks)"
    if teacher_name in reused:  # same model, same windows: measured by an earlier run
        res["rows"][teacher_name] = reused[teacher_name]
    else:
        measure(teacher_name, t.model)
    # Which 20 blocks to keep matters more than anything training can do in minutes: the evenly
    # spaced cut and the angular-distance cut (Gromov et al. 2024) on the curve windows, then
    # the full evaluation of the cut that is trained.
    calib = calibration_blocks(tok, n=8, seq_len=128)
    importance = angular_importance(t, calib)
    res["angular_importance"] = [round(x, 4) for x in importance]
    cuts: dict[str, dict[str, Any]] = {"even": {}, "angular": {"importance": importance}}
    res["cut_ppl_on_curve_windows"] = reused.get("_cut_curve", {})
    for how, kw in cuts.items():
        cut = drop_blocks(t, keep=keep, **kw)
        res[f"kept_blocks_{how}"] = cut.extra["student"]["kept_blocks"]
        if how not in res["cut_ppl_on_curve_windows"]:
            value = ppl(cut.model, curve_windows)["ppl/python-docs"]
            res["cut_ppl_on_curve_windows"][how] = value
        print(f"cut {keep}, {how}: curve-window ppl", res["cut_ppl_on_curve_windows"][how])
        name = f"cut {keep}, {how} (no training)"
        if how == args.cut:
            if name in reused:
                res["rows"][name] = reused[name]
            else:
                measure(name, cut.model)
        del cut
    res["trained_cut"] = args.cut
    common = dict(
        max_steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=max(1, args.steps // 10),
        schedule="cosine",
        seed=0,
        clip=1.0,
        temperature=args.temperature,
    )
    res["config"] = common
    runs = {"KD": {"kl": 1.0}, "CE": {"ce": 1.0}, "KD+CE": {"kl": 0.5, "ce": 0.5}}
    for label in args.runs:
        losses = runs[label]
        s = drop_blocks(t, keep=keep, **cuts[args.cut])
        hook = PplCurve(curve_windows, max(1, args.steps // args.curve_points))
        cfg = DistillConfig(losses=losses, **common)
        print(f"training {label}: {args.steps} steps of {args.batch_size} x {args.seq_len}")
        r = train(s.model, t, data, cfg, hooks=[hook], tokenizer=tok)
        res["curves"][label] = hook.points
        train_s = r.seconds - hook.seconds
        measure(
            f"{args.cut} cut + {label} ({r.steps} steps)",
            s.model,
            {
                "run": label,
                "losses": losses,
                "train_tokens": r.tokens,
                "train_s": round(train_s, 1),
                "tokens_per_s": round(r.tokens / train_s, 1),
                "first_loss": round(r.losses[0], 4),
                "last_loss": round(r.losses[-1], 4),
            },
        )
        del s
    res["utc_end"] = utc()
    return res


def _reused_rows(path: str | None, eval_desc: str, keep: int) -> dict[str, Any]:
    """Rows of untrained models (teacher, cuts) from an earlier result JSON of this script, if it
    evaluated on the same windows: a second process can then train without re-measuring them.
    Cut rows only come from a run of the same ``keep``; the teacher's from any."""
    if not path:
        return {}
    prev = json.loads(Path(path).read_text())
    for res in prev.get("smollm2", []):
        if res.get("eval") != eval_desc:
            continue
        same = res.get("keep") == keep
        rows = {
            n: r
            for n, r in res.get("rows", {}).items()
            if "train_tokens" not in r and (same or n.startswith("teacher"))
        }
        rows["_from"] = f"{Path(path).name}, run of {prev.get('utc_start')}: {sorted(rows)}"
        rows["_cut_curve"] = dict(res.get("cut_ppl_on_curve_windows", {})) if same else {}
        return rows
    raise SystemExit(f"{path} has no rows measured on {eval_desc}")


# --- MiniLM: 6 -> 3 layers -----------------------------------------------------------------------


def bench_minilm(args: argparse.Namespace) -> dict[str, Any]:
    t = load_model("minilm-l6")
    fit = sentences("python-docs", "fit", n=args.minilm_sentences)
    s = drop_blocks(t, keep=3)

    def score(lm: Any) -> dict[str, float]:
        r = evaluate(lm, data=["python-docs"], reference=t, n_sentences=256, seq_len=128)
        return {k: round(v, 4) for k, v in r.items()}

    before = score(s)
    print("minilm before", before, flush=True)
    enc = t.tokenizer(fit, padding=True, truncation=True, max_length=128, return_tensors="pt")
    cfg = DistillConfig(
        losses={"embed": 1.0, "hidden": 1.0},
        max_steps=args.minilm_steps,
        batch_size=16,
        seq_len=128,
        lr=1e-4,
        warmup_steps=max(1, args.minilm_steps // 10),
        seed=0,
    )
    r = train(s.model, t, dict(enc), cfg, tokenizer=t.tokenizer)
    after = score(s)
    print("minilm after", after, flush=True)
    return {
        "before": before,
        "after": after,
        "steps": r.steps,
        "batch_size": 16,
        "max_len": 128,
        "train_s": round(r.seconds, 1),
        "tokens_per_s (non-pad)": round(r.tokens / r.seconds, 1),
        "train_sentences": len(fit),
        "eval": "256 held-out python-docs paragraphs (second half), max 128 tokens",
        "first_loss": round(r.losses[0], 4),
        "last_loss": round(r.losses[-1], 4),
    }


def plot(curves: dict[str, list], path: Path, title: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_tables(out: dict[str, Any]) -> None:
    for res in out["smollm2"]:
        print(f"\nSmolLM2-135M -> {res['keep']}/30 blocks; eval {res['eval']}; {out['mode']}")
        head = f"{'model':30s} {'params':>11s} {'ppl/python-docs':>16s} {'ppl/shakespeare':>16s}"
        print(head + f" {'train tokens':>12s} {'tok/s':>7s}")
        base = res["rows"].get("teacher fp32 (30 blocks)", {})
        for name, r in res["rows"].items():
            toks, tps = r.get("train_tokens", ""), r.get("tokens_per_s", "")
            print(
                f"{name:30s} {r['params']:>11,d} {r['ppl/python-docs']:>16.3f} "
                f"{r['ppl/shakespeare']:>16.3f} {toks!s:>12s} {tps!s:>7s}"
            )
        for how, v in res.get("cut_ppl_on_curve_windows", {}).items():
            print(
                f"  cut {how} (blocks {res.get(f'kept_blocks_{how}')}): ppl {v:.2f} on curve windows"
            )
        trained = {
            r.get("run") or n.split(" + ")[-1].split(" (")[0]: r
            for n, r in res["rows"].items()
            if " + " in n
        }
        ce = trained.pop("CE", None)
        for run, kd in trained.items():
            if not (ce and base):
                break
            for d in ("python-docs", "shakespeare"):
                k, c, b = kd[f"ppl/{d}"], ce[f"ppl/{d}"], base[f"ppl/{d}"]
                print(
                    f"  {d}: {run}/CE ppl ratio {k / c:.3f} ({run + ' wins' if k < c else 'CE wins'}); "
                    f"{run}/teacher {k / b:.3f}, CE/teacher {c / b:.3f}"
                )
    if out.get("minilm"):
        m = out["minilm"]
        print(f"\nMiniLM-L6 -> 3 layers ({m['steps']} steps, {m['tokens_per_s (non-pad)']} tok/s)")
        for k in m["before"]:
            print(f"  {k:24s} before {m['before'][k]:.4f}  after {m['after'][k]:.4f}")
    print(
        "\nNo peer distillation tool is installed here: the baseline is plain cross-entropy "
        "fine-tuning on the same tokens (same steps, batch, lr, schedule, data order)."
    )


def merge(paths: list[str], target: Path, args: argparse.Namespace) -> None:
    """One table and one curve from runs that trained KD and CE in separate processes on the
    same cut, data order, windows and settings (checked)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    out = {**parts[0], "merged_from": paths, "utc_end": utc()}
    base = out["smollm2"][0] = dict(parts[0]["smollm2"][0])
    base["rows"], base["curves"] = dict(base["rows"]), dict(base["curves"])
    for other in parts[1:]:
        res = other["smollm2"][0]
        for key in ("keep", "eval", "curve_eval", "config", "kept_blocks_angular", "trained_cut"):
            if res.get(key) != base.get(key):
                raise SystemExit(f"cannot merge: {key} differs ({res.get(key)} vs {base.get(key)})")
        for name, row in res["rows"].items():
            base["rows"].setdefault(name, row)
        base["curves"].update(res["curves"])
    target.write_text(json.dumps(out, indent=2) + "\n")
    png = target.with_name(f"distill_recovery_keep{base['keep']}.png")
    cfg = base["config"]
    plot(
        base["curves"],
        png,
        f"SmolLM2-135M cut to {base['keep']}/30 blocks ({base['trained_cut']}): KD vs CE, same "
        f"tokens\n{cfg['max_steps']} steps x {cfg['batch_size']} x {cfg['seq_len']}, lr {cfg['lr']}",
        f"python-docs perplexity ({base['curve_eval'].split(', ')[1]})",
    )
    print_tables(out)
    print(f"\nwrote {target} and {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", action="store_true", help="only time the parts of one step")
    ap.add_argument("--profile-reps", type=int, default=2)
    ap.add_argument("--keep", type=int, nargs="+", default=[20])
    ap.add_argument("--cut", choices=("angular", "even"), default="angular", help="cut to train")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eval-windows", type=int, default=16, help="512-token windows per dataset")
    ap.add_argument("--curve-windows", type=int, default=4)
    ap.add_argument("--curve-points", type=int, default=4)
    ap.add_argument("--minilm-steps", type=int, default=40)
    ap.add_argument("--minilm-sentences", type=int, default=2000)
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--reuse-rows",
        "--teacher-row",
        dest="reuse_rows",
        help="reuse the teacher / cut rows of this earlier result JSON (same eval windows)",
    )
    ap.add_argument("--runs", nargs="+", choices=("KD", "CE", "KD+CE"), default=["KD", "CE"])
    ap.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of KD")
    ap.add_argument("--merge", nargs="+", help="merge result JSONs (KD and CE runs) and plot")
    ap.add_argument("--tag", default="", help="suffix of the result files")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    if args.profile:
        prof = profile_step(args)
        prof["machine"] = MACHINE
        path = RESULTS / f"distill_profile{suffix}.json"
        path.write_text(json.dumps(prof, indent=2) + "\n")
        print(f"wrote {path}")
        return
    if args.merge:
        merge(args.merge, RESULTS / f"distill{suffix}.json", args)
        return
    mode = f"keep={args.keep} steps={args.steps} batch={args.batch_size} seq={args.seq_len}"
    out: dict[str, Any] = {
        "mode": mode,
        "machine": MACHINE,
        "load_average_at_start": os.getloadavg(),
        "torch_threads": args.threads,
        "args": vars(args),
        "utc_start": utc(),
        "smollm2": [],
        "minilm": None,
    }
    t0 = time.time()
    path = RESULTS / f"distill{suffix}.json"

    def save() -> None:  # after each part, so a long run that is cut short keeps what it measured
        out["wall_s"] = round(time.time() - t0, 1)
        path.write_text(json.dumps(out, indent=2) + "\n")

    if not args.skip_smollm2:
        for keep in args.keep:
            res = bench_smollm2(args, keep, out["smollm2"], save)
            save()
            png = RESULTS / f"distill_recovery_keep{keep}{suffix}.png"
            plot(
                res["curves"],
                png,
                f"SmolLM2-135M cut to {keep}/30 blocks: KD vs CE, same tokens\n"
                f"{args.steps} steps x {args.batch_size} x {args.seq_len}, lr {args.lr}",
                f"python-docs perplexity ({args.curve_windows} x 512 tokens)",
            )
            res["png"] = str(png.relative_to(RESULTS.parent.parent))
            save()
    if not args.skip_minilm:
        out["minilm"] = bench_minilm(args)
        save()
    out["utc_end"] = utc()
    save()
    print_tables(out)
    print(f"\nwall {out['wall_s']} s; {MACHINE}; torch threads {args.threads}; {out['utc_end']}")


if __name__ == "__main__":
    main()
