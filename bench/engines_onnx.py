"""ONNX Runtime beside torch (BENCH.md protocol): SmolLM2-135M fp32 and ours 4-bit (RTN and GPTQ,
group 32, asymmetric; MatMulNBits on our codes) exported with ``slimline export --format onnx``
and verified in ORT; MiniLM-L6 fp32 and int8 (RTN per-channel) as encoders.

    python bench/engines_onnx.py --json bench/results/engines_onnx.json    # full run (quiet box)
    python bench/engines_onnx.py --quality-only                            # no timing (under load)
    python bench/engines_onnx.py --smoke                                   # 2 blocks, tiny settings

Decoders: perplexity from each engine's own logits on the python-docs eval windows; prefill of
512 tokens and greedy decode of 64 after a 32-token prompt, every (model, engine) pair once per
round, interleaved, median over rounds after a warm-up round (``Engine.measure``). Encoders:
sentences/s encoding python-docs lines in batches of 32 (torch: ``slimline.models.embed``, the
sentence-transformers recipe: mean pooling + L2 norm), interleaved the same way; cosine of every
embedding to torch fp32's. Results go to ``--json`` after every step.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SLIMLINE_QUIET", "1")

import torch

from engines import (  # bench/engines.py: same results file, same ppl, same summary
    RESULTS,
    dump,
    ppl_in_engine,
    speed_summary,
)


def decoders(args: argparse.Namespace, out: Path) -> None:
    from slimline.data import calibration_blocks, eval_blocks
    from slimline.engines.onnxruntime_engine import OnnxRuntimeEngine
    from slimline.engines.torch_engine import TorchEngine
    from slimline.export.onnx_export import export_onnx
    from slimline.models import load_model, truncate
    from slimline.quant import Gptq, Rtn, quantize

    seq, prompt, new, calib_len = 512, 32, 64, 512
    lm = load_model("smollm2-135m")
    if args.smoke:
        lm = truncate(lm, 2)
        args.eval, args.calib, args.rounds = 2, 8, 1
        seq, prompt, new, calib_len = 64, 8, 8, 64
    tok = lm.tokenizer
    ev = eval_blocks(tok, "python-docs", seq_len=seq, max_blocks=args.eval)
    RESULTS["settings"] = {
        "model": lm.source,
        "threads": args.threads,
        "eval_windows": int(ev.shape[0]),
        "seq_len": seq,
        "prompt_len": prompt,
        "new_tokens": new,
        "rounds": args.rounds,
        "calib": args.calib,
        "timed": not args.quality_only,
        "load_at_start": os.getloadavg()[0],
    }
    models: dict[str, Any] = {"fp32": lm.model}
    rows = args.rows.split(",")
    calib = None
    for key in rows:
        m = copy.deepcopy(lm.model)
        t0 = time.perf_counter()
        if key == "rtn-g32":
            quantize(m, Rtn(bits=4, group_size=32, symmetric=False))
        elif key == "gptq-g32":
            if calib is None:
                calib = calibration_blocks(tok, "python-docs", n=args.calib, seq_len=calib_len)
            quantize(m, Gptq(bits=4, group_size=32, symmetric=False), data=calib)
        else:
            raise SystemExit(f"unknown row {key!r} (rtn-g32, gptq-g32)")
        models[key] = m
        RESULTS.setdefault("decoders", {})[key] = {"quantize_s": time.perf_counter() - t0}
    files = {}
    for key, m in models.items():
        t0 = time.perf_counter()
        res = export_onnx(m, tok, out / f"{key}.onnx", threads=args.threads)
        v = res.record["verify"]
        RESULTS.setdefault("decoders", {}).setdefault(key, {}).update(
            {
                "bytes": res.record["bytes"],
                "op_counts": res.record["op_counts"],
                "verify_kl": v["same_weights"]["kl"],
                "verify_max_abs_logit_diff": v["same_weights"]["max_abs_logit_diff"],
                "export_s": time.perf_counter() - t0,
            }
        )
        files[key] = res.path
        dump(args.json)
    engines: dict[str, Any] = {"torch:fp32": TorchEngine(lm, args.threads, tok)}
    for key, path in files.items():
        engines[f"onnxruntime:{key}"] = OnnxRuntimeEngine(path, threads=args.threads)
    ppl = {}
    for key, eng in engines.items():
        ppl[key] = ppl_in_engine(eng, ev)
        RESULTS.setdefault("ppl", {})[key] = ppl[key]
        dump(args.json)
    speed: dict[str, dict[str, Any]] = {}
    if not args.quality_only:
        runs: dict[str, list[dict]] = {k: [] for k in engines}
        for r in range(args.rounds):
            for key, eng in engines.items():
                runs[key].append(
                    eng.measure(
                        seq_len=seq,
                        prompt_len=prompt,
                        new_tokens=new,
                        repeats=1,
                        warmup=int(r == 0),
                    )
                )
        speed = {key: speed_summary(rs) for key, rs in runs.items()}
        RESULTS["speed"] = speed
        RESULTS["settings"]["load_after_timing"] = os.getloadavg()[0]
    for eng in engines.values():
        eng.close()
    dump(args.json)

    print(f"\nSmolLM2-135M{' [:2] smoke' if args.smoke else ''}, {args.threads} threads")
    print("| model | engine | ppl python-docs | decode tok/s | prefill ms | MB |")
    print("|---|---|---|---|---|---|")
    for key, eng in engines.items():
        name, model = key.split(":", 1)
        s = speed.get(key)
        d = RESULTS["decoders"].get(model, {}) if name == "onnxruntime" else {}
        dec = f"{s['decode_tok_s']:.1f}" if s else "not timed"
        pre = f"{s['prefill_ms']:.0f}" if s else "not timed"
        mb = f"{d['bytes'] / 1e6:.1f}" if d else ""
        ver = s["version"] if s else eng.version
        print(f"| {model} | {name} {ver} | {ppl[key]:.3f} | {dec} | {pre} | {mb} |")


def encoders(args: argparse.Namespace, out: Path) -> None:
    from slimline.data import load_text
    from slimline.engines.onnxruntime_engine import OnnxEncoder
    from slimline.export.onnx_export import export_onnx
    from slimline.models import embed, load_model
    from slimline.quant import Rtn, quantize

    lm = load_model("minilm-l6")
    q = copy.deepcopy(lm)
    quantize(q.model, Rtn(bits=8, group_size=None))
    n = 64 if args.smoke else 512
    lines = [ln.strip() for ln in load_text("python-docs").splitlines() if len(ln.strip()) > 40]
    lines = lines[len(lines) // 2 :][:n]  # the eval half
    batches = [
        lm.tokenizer(
            lines[i : i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt"
        )
        for i in range(0, len(lines), 32)
    ]
    files = {}
    for key, m in (("fp32", lm), ("int8", q)):
        res = export_onnx(m.model, m.tokenizer, out / f"minilm-{key}.onnx", threads=args.threads)
        files[key] = res.path
        RESULTS.setdefault("encoders", {})[f"onnxruntime:{key}"] = {
            "bytes": res.record["bytes"],
            "op_counts": res.record["op_counts"],
        }
    encs = {k: OnnxEncoder(p, threads=args.threads) for k, p in files.items()}

    def run(key: str) -> torch.Tensor:
        if key == "torch:fp32":
            with torch.inference_mode():
                return torch.cat([embed(lm, b["input_ids"], b["attention_mask"]) for b in batches])
        enc = encs[key.split(":")[1]]
        return torch.cat([enc.encode(b["input_ids"], b["attention_mask"]) for b in batches])

    keys = ["torch:fp32", "onnxruntime:fp32", "onnxruntime:int8"]
    torch.set_num_threads(args.threads)
    ref = run("torch:fp32")
    for key in keys:
        cos = torch.nn.functional.cosine_similarity(run(key), ref, dim=-1)
        r = RESULTS.setdefault("encoders", {}).setdefault(key, {})
        r.update({"cosine_to_torch_fp32_mean": float(cos.mean()), "cosine_min": float(cos.min())})
    if not args.quality_only:
        times: dict[str, list[float]] = {k: [] for k in keys}
        for _ in range(args.rounds):
            for key in keys:
                t0 = time.perf_counter()
                run(key)
                times[key].append(len(lines) / (time.perf_counter() - t0))
        for key in keys:
            RESULTS["encoders"][key]["sentences_s"] = statistics.median(times[key])
            RESULTS["encoders"][key]["sentences_s_min"] = min(times[key])
    for e in encs.values():
        e.close()
    dump(args.json)
    print(f"\nMiniLM-L6, {len(lines)} python-docs lines, batches of 32, {args.threads} threads")
    print("| model | engine | sentences/s | cosine to torch fp32 (mean / min) | MB |")
    print("|---|---|---|---|---|")
    for key in keys:
        r = RESULTS["encoders"][key]
        sps = f"{r['sentences_s']:.0f}" if "sentences_s" in r else "not timed"
        mb = f"{r['bytes'] / 1e6:.1f}" if "bytes" in r else ""
        eng, model = key.split(":")
        print(
            f"| {model} | {eng} | {sps} | {r['cosine_to_torch_fp32_mean']:.5f} / "
            f"{r['cosine_min']:.5f} | {mb} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="2 blocks, tiny settings")
    ap.add_argument("--quality-only", action="store_true", help="perplexity/cosine, no timing")
    ap.add_argument("--eval", type=int, default=64, help="python-docs eval windows (64)")
    ap.add_argument("--calib", type=int, default=128, help="GPTQ calibration windows (128)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="rtn-g32,gptq-g32", help="4-bit decoders to add to fp32")
    ap.add_argument("--json", default=None, help="write results here after every step")
    ap.add_argument("--skip", default="", help="decoders or encoders, to leave out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        if "decoders" not in args.skip:
            decoders(args, Path(tmp))
        if "encoders" not in args.skip:
            encoders(args, Path(tmp))


if __name__ == "__main__":
    main()
