"""Weight quantization benchmark (BENCH.md protocol) on SmolLM2-135M-Instruct: fp32 vs RTN / GPTQ /
AWQ at 8, 4 (and 3) bits, group 128 / 64 / per-channel, against torchao weight-only int8 / int4
measured in the same run, plus MiniLM embedding fidelity and the latency of each execution path.

    python bench/quant.py --quick            # 32 calib, 16 + 16 eval windows, 3 timing rounds
    python bench/quant.py                    # 128 calib, 64 + 64 eval windows, 5 timing rounds
    python bench/quant.py --rows gptq:4:64 --skip-latency --skip-minilm --skip-peer   # one row

Rows are ``method:bits:group`` with group ``pc`` for per-channel (``rtn:8:pc``). Width 576 is not
a multiple of 128: our grid quantizes the last group of each 576-wide row with 64 columns (a
ragged group); the record's ``ragged_layers`` counts them. Every row: ppl on python-docs and
Hamlet, KL(fp32 || quantized) on the python-docs windows, compression wall s, the process RSS
peak sampled during compression, artifact bytes (``save_artifact``). Latency: ``profile`` on each
model once per round, models interleaved A B A B, median over rounds after a warm-up round.
Results are written to ``--json`` after every row, so a cut-off run still leaves figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SLIMLINE_QUIET", "1")

import torch

warnings.filterwarnings("ignore")

PEER_GPTQ = {"ppl": 15.581, "seconds": 556, "rss_mb": 1748, "calib": 128, "mb": 173.2}
ROWS = (  # most important first: a cut-off run still has the peer comparison
    "rtn:8:pc,gptq:4:64,awq:4:64,rtn:4:64,torchao:int8,torchao:int4,"
    "rtn:8:128,gptq:8:128,awq:8:128,rtn:4:128,gptq:4:128,awq:4:128,rtn:4:pc,gptq:4:pc,"
    "rtn:3:64,gptq:3:64,awq:3:64"
)
RESULTS: dict[str, Any] = {}


def dump(path: str | None) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(RESULTS, indent=2, default=str))
        os.replace(tmp, path)


def parse_row(spec: str) -> tuple[str, int, int | None]:
    method, bits, group = spec.split(":")
    return method, int(bits), None if group == "pc" else int(group)


def label(method: str, bits: int, group: int | None) -> str:
    return f"{method.upper()} W{bits} {'per-channel' if group is None else f'g{group}'}"


def compress(base: torch.nn.Module, spec: str, calib: torch.Tensor) -> tuple[Any, dict]:
    """A quantized deep copy of ``base`` and the cost of making it (wall s, sampled RSS peak)."""
    from slimline.profile.runtime import RssSampler
    from slimline.quant import Awq, Gptq, Rtn, quantize

    m = copy.deepcopy(base)
    info: dict[str, Any] = {}
    with RssSampler() as rss:
        t0, c0 = time.perf_counter(), time.process_time()
        if spec.startswith("torchao:"):
            from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
            from torchao.quantization.granularity import PerGroup

            if spec == "torchao:int8":
                cfg = Int8WeightOnlyConfig()
            else:  # torchao 0.18's int4 packings need mslk, bf16 or CUDA here; this one runs fp32
                cfg = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(64))

            def blocks_only(mod: torch.nn.Module, fqn: str) -> bool:
                return isinstance(mod, torch.nn.Linear) and fqn.startswith("model.layers.")

            quantize_(m, cfg, filter_fn=blocks_only)
        else:
            method, bits, group = parse_row(spec)
            cls = {"rtn": Rtn, "gptq": Gptq, "awq": Awq}[method]
            cfg = cls(bits=bits, group_size=group)
            rec = quantize(m, cfg, data=None if method == "rtn" else calib)
            info["ragged_layers"] = sum(1 for r in rec.get("per_layer", []) if r.get("ragged"))
            info["layers"] = len(rec.get("per_layer", []))
        info["compress_s"] = time.perf_counter() - t0
        # CPU seconds of the process: on this contended VM closer to what the run costs alone
        info["compress_cpu_s"] = time.process_time() - c0
    info["rss_peak_mb"] = rss.peak / 2**20
    return m, info


def artifact_bytes(model: torch.nn.Module, tok: Any) -> int | None:
    from slimline.artifact import save_artifact

    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        try:
            return save_artifact(model, tok, Path(d) / "a").size_bytes
        except Exception as e:  # torchao tensor subclasses are not a slimline codec
            print(f"  (artifact not saved: {type(e).__name__}: {str(e)[:120]})", flush=True)
            return None


def quality(model: Any, ref: Any, tok: Any, ev_py: torch.Tensor, ev_ham: torch.Tensor) -> dict:
    """ppl on both eval sets; KL / top-1 agreement to ``ref`` on the python-docs windows."""
    from slimline.eval import evaluate

    out: dict[str, float] = {}
    if ref is None:
        out.update(evaluate(model, data={"python-docs": ev_py}, suite="ppl", tokenizer=tok))
    else:
        r = evaluate(model, data={"python-docs": ev_py}, reference=ref, tokenizer=tok)
        out.update({k: r[k] for k in ("ppl/python-docs", "kl/teacher", "agree/top1")})
    if len(ev_ham):
        out.update(evaluate(model, data={"shakespeare": ev_ham}, suite="ppl", tokenizer=tok))
    return {k: v for k, v in out.items() if not k.startswith("bpb")}


def grid(args: argparse.Namespace, lm: Any, calib: torch.Tensor, ev_py, ev_ham) -> None:
    base = lm.model
    rows = RESULTS.setdefault("rows", [])
    if not args.skip_fp32:
        t = time.perf_counter()
        q = quality(base, None, lm.tokenizer, ev_py, ev_ham)
        rows.append({"row": "fp32", **q, "bytes": 538_168_695, "eval_s": time.perf_counter() - t})
        print(f"fp32: {q}", flush=True)
        dump(args.json)
    specs = [s for s in args.rows.split(",") if s]
    if args.skip_peer:
        specs = [s for s in specs if not s.startswith("torchao")]
    for spec in specs:
        name = (
            {"torchao:int8": "torchao int8 weight-only", "torchao:int4": "torchao int4 wo g64"}[
                spec
            ]
            if spec.startswith("torchao")
            else label(*parse_row(spec))
        )
        try:
            m, info = compress(base, spec, calib)
        except Exception as e:
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
            rows.append({"row": name, "spec": spec, "error": f"{type(e).__name__}: {e}"})
            dump(args.json)
            continue
        t = time.perf_counter()
        q = quality(m, None if args.no_kl else base, lm.tokenizer, ev_py, ev_ham)
        info["eval_s"] = time.perf_counter() - t
        info["bytes"] = None if spec.startswith("torchao") else artifact_bytes(m, lm.tokenizer)
        row = {"row": name, "spec": spec, **q, **info}
        rows.append(row)
        print(
            f"{name}: ppl py {q['ppl/python-docs']:.3f} ham {q.get('ppl/shakespeare', 0):.3f} "
            f"kl {q.get('kl/teacher', 0):.4f} compress {info['compress_s']:.1f}s "
            f"(cpu {info['compress_cpu_s']:.1f}s) "
            f"rss {info['rss_peak_mb']:.0f}MB bytes {info['bytes']}",
            flush=True,
        )
        dump(args.json)
        del m


def latency(args: argparse.Namespace, lm: Any, ev_py: torch.Tensor, rounds: int) -> None:
    """Prefill / decode of fp32, each QuantLinear path and torchao, interleaved A B A B."""
    from slimline.eval import evaluate
    from slimline.profile import profile
    from slimline.quant import Rtn, quantize, set_path

    base = lm.model
    models: dict[str, Any] = {"fp32": base}
    wanted = [w for w in args.paths.split(",") if w]
    for bits, group in ((8, 128), (4, 64)):
        paths = [w.split(":", 1)[1] for w in wanted if w.startswith(f"W{bits}:")]
        if not paths:
            continue
        q = copy.deepcopy(base)  # the path's speed depends on the scheme, not on how it was rounded
        quantize(q, Rtn(bits=bits, group_size=group))
        for p in paths:
            m = copy.deepcopy(q)
            set_path(m, p)
            models[f"W{bits} g{group} {p}"] = m
        del q
    for spec in ("torchao:int8", "torchao:int4"):
        if spec in wanted and not args.skip_peer:
            models[f"{spec.replace(':', ' ')} weight-only"] = compress(base, spec, None)[0]
    from slimline.profile.runtime import torch_threads
    from slimline.quant.linear import measure_paths, quant_linears

    layers = RESULTS.setdefault("layer_paths_ms", {})
    with torch_threads(2):  # one layer, every path, 1 and 512 rows: the kernel story in isolation
        for name, m in models.items():
            if name.endswith("dequant-cached"):
                lay = quant_linears(m)["model.layers.0.mlp.up_proj"]
                layers[name.split(" dequant")[0] + " up_proj 576->1536"] = measure_paths(lay)
    print(f"layer paths (ms): {layers}", flush=True)
    acc = RESULTS.setdefault("latency_ppl", {})
    if args.path_eval:  # what the inexact int8-activation paths cost in accuracy
        ev = {"python-docs": ev_py[: args.path_eval]}
        for name, m in models.items():
            if name == "fp32" or name.endswith("int8act"):
                acc[name] = evaluate(m, data=ev, suite="ppl")["ppl/python-docs"]
                print(
                    f"{name}: ppl python-docs ({args.path_eval} windows) {acc[name]:.3f}",
                    flush=True,
                )
        dump(args.json)
    pre: dict[str, list[float]] = {k: [] for k in models}
    dec: dict[str, list[float]] = {k: [] for k in models}
    failed = RESULTS.setdefault("latency_failed", {})
    for r in range(rounds + 1):  # round 0 is the warm-up (builds caches / ORT sessions)
        for name, m in list(models.items()):
            try:
                p = profile(
                    m, repeats=1, warmup=0, breakdown=False, threads=2, tokenizer=lm.tokenizer
                )
            except Exception as e:  # e.g. torchao tensors lack aten.count_nonzero (param_stats)
                failed[name] = f"{type(e).__name__}: {str(e)[:200]}"
                print(f"{name}: profile failed, dropped: {failed[name]}", flush=True)
                del models[name], pre[name], dec[name]
                continue
            if r:
                pre[name].append(p.metrics["latency/prefill_ms"])
                dec[name].append(p.metrics["latency/decode_tok_s"])
        print(f"latency round {r} done", flush=True)
        if r:
            RESULTS["latency"] = {
                k: {
                    "prefill_ms": statistics.median(pre[k]),
                    "prefill_ms_min": min(pre[k]),
                    "prefill_ms_max": max(pre[k]),
                    "decode_tok_s": statistics.median(dec[k]),
                    "decode_tok_s_min": min(dec[k]),
                    "decode_tok_s_max": max(dec[k]),
                    "rounds": len(pre[k]),
                    "prefill_ms_all": pre[k],
                    "decode_tok_s_all": dec[k],
                }
                for k in models
            }
            dump(args.json)
    # Why int8 weights cannot speed decode much here: the share of a decode step that GEMMs take
    from slimline.profile import decode_breakdown

    prompt = torch.randint(
        0, lm.model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0)
    )
    split = RESULTS.setdefault("decode_breakdown", {})
    with torch_threads(2):
        for name in ("fp32", "W8 g128 dequant-cached"):
            if name in models:
                split[name] = decode_breakdown(models[name], prompt, new_tokens=32)
                print(f"decode breakdown {name}: {split[name]['share']}", flush=True)
    dump(args.json)


def minilm(args: argparse.Namespace) -> None:
    """MiniLM-L6: cosine / neighbour recall of quantized embeddings to the fp32 ones."""
    from slimline.data import calibration_blocks
    from slimline.eval import evaluate
    from slimline.models import load_model
    from slimline.quant import Gptq, Rtn, quantize

    ref = load_model("minilm-l6")
    calib = calibration_blocks(ref.tokenizer, "python-docs", n=32, seq_len=256, seed=0)
    out = RESULTS.setdefault("minilm", [])
    for cls, bits in ((Rtn, 8), (Gptq, 8), (Rtn, 4), (Gptq, 4)):
        lm = copy.deepcopy(ref)
        t = time.perf_counter()
        quantize(lm, cls(bits=bits, group_size=128), data=calib)
        secs = time.perf_counter() - t
        r = evaluate(lm, reference=ref, data=["python-docs"], n_sentences=args.sentences)
        row = {"row": f"{cls.__name__.upper()} W{bits} g128", "compress_s": secs, **r}
        out.append(row)
        print(f"minilm {row}", flush=True)
        dump(args.json)


def table(rows: list[dict]) -> str:
    fp = next((r for r in rows if r["row"] == "fp32"), None)
    lines = [
        "| config | ppl python-docs | ratio to fp32 | ppl Hamlet | KL to fp32 | top-1 agree | "
        "compress wall s | compress CPU s | RSS peak MB (sampled) | artifact MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error'][:80]} |||||||")
            continue
        ratio = r["ppl/python-docs"] / fp["ppl/python-docs"] if fp else float("nan")
        lines.append(
            f"| {r['row']} | {r['ppl/python-docs']:.3f} | {ratio:.4f} | "
            f"{r.get('ppl/shakespeare', float('nan')):.3f} | {r.get('kl/teacher', 0):.4f} | "
            f"{r.get('agree/top1', 1):.4f} | {r.get('compress_s', 0):.1f} | "
            f"{r.get('compress_cpu_s', 0):.1f} | "
            f"{r.get('rss_peak_mb', 0):.0f} | "
            f"{'' if r.get('bytes') is None else format(r['bytes'] / 1e6, '.1f')} |"
        )
    return "\n".join(lines)


def latency_table(lat: dict, ppl: dict) -> str:
    fp = lat["fp32"]
    lines = [
        "| model / path | prefill 512 ms (min-max) | prefill vs fp32 | decode tok/s (min-max) | "
        "decode vs fp32 | ppl python-docs |",
        "|---|---|---|---|---|---|",
    ]
    for k, v in lat.items():
        lines.append(
            f"| {k} | {v['prefill_ms']:.0f} ({v['prefill_ms_min']:.0f}-{v['prefill_ms_max']:.0f}) | "
            f"{v['prefill_ms'] / fp['prefill_ms']:.2f}x | {v['decode_tok_s']:.1f} "
            f"({v['decode_tok_s_min']:.1f}-{v['decode_tok_s_max']:.1f}) | "
            f"{v['decode_tok_s'] / fp['decode_tok_s']:.2f}x | "
            f"{'' if k not in ppl else f'{ppl[k]:.3f}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--calib", type=int, default=None, help="calibration windows (128; quick 32)")
    ap.add_argument("--eval", type=int, default=None, help="eval windows per set (64; quick 16)")
    ap.add_argument(
        "--rows", default=ROWS, help="method:bits:group list (group pc|N), torchao:int8|int4"
    )
    ap.add_argument("--skip-fp32", action="store_true")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--ham", type=int, default=None, help="Hamlet windows (default: --eval)")
    ap.add_argument("--no-kl", action="store_true", help="skip KL to fp32 (saves fp32 passes)")
    ap.add_argument(
        "--paths",
        default="W8:dequant-cached,W8:ort-nbits,W8:ort-nbits-int8act,W4:dequant-cached,"
        "W4:dequant-fly,W4:ort-nbits,W4:ort-nbits-int8act,torchao:int8,torchao:int4",
        help="models timed beside fp32: W8 g128 / W4 g64 QuantLinear paths, torchao peers",
    )
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (5; quick 3)")
    ap.add_argument("--path-eval", type=int, default=4, help="eval windows for path accuracy")
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for compress + eval")
    args = ap.parse_args()
    # latency always at 2 threads (BENCH.md); compression and evaluation at --threads (2 on a
    # quiet machine, the peers' setting; 1 when other jobs share the 2 cores)
    torch.set_num_threads(args.threads)
    from slimline.data import calibration_blocks, eval_blocks
    from slimline.models import load_model

    n_calib = args.calib or (32 if args.quick else 128)
    n_eval = args.eval or (16 if args.quick else 64)
    rounds = args.rounds or (3 if args.quick else 5)
    lm = load_model("smollm2-135m")
    tok = lm.tokenizer
    calib = calibration_blocks(tok, "python-docs", n=n_calib, seq_len=512, seed=0)
    ev_py = eval_blocks(tok, "python-docs", seq_len=512, max_blocks=n_eval)
    n_ham = n_eval if args.ham is None else args.ham
    ev_ham = eval_blocks(tok, "shakespeare", seq_len=512, max_blocks=max(n_ham, 1))[:n_ham]
    RESULTS.update(
        {
            "mode": "quick" if args.quick else "full",
            "calib": [n_calib, 512],
            "eval_windows": {"python-docs": len(ev_py), "shakespeare": len(ev_ham)},
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "load_average_at_start": os.getloadavg(),
            "threads": {"compress_eval": args.threads, "latency": 2},
            "engine": "torch eager fp32 (2.13 CPU); ORT MatMulNBits for ort-* paths",
        }
    )
    print(f"# {RESULTS}", flush=True)
    if not args.skip_grid:
        grid(args, lm, calib, ev_py, ev_ham)
        print("\n" + table(RESULTS["rows"]), flush=True)
    if not args.skip_minilm:
        minilm(args)
    if not args.skip_latency:
        latency(args, lm, ev_py, rounds)
        print("\n" + latency_table(RESULTS["latency"], RESULTS["latency_ppl"]), flush=True)
    RESULTS["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    dump(args.json)


if __name__ == "__main__":
    main()
