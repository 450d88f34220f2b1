"""Artifact + engine, measured where it runs (BENCH.md protocol): SmolLM2-135M fp32 / int8 / int4
in torch eager and in llama.cpp, side by side in one run, beside llama.cpp's own quantizer
(``llama_model_quantize``) applied to our f32 export at the same types.

    python bench/engines.py --json bench/results/engines.json      # the full run (lead: quiet box)
    python bench/engines.py --smoke                                 # 2 blocks, tiny settings

Models: fp32; ours RTN on the gguf-q8_0 grid (int8); ours GPTQ on the gguf-q4_0, gguf-q4_1 and
gguf-q5_0 grids, and a K mix (gguf-q5_0 on the 576-wide layers, gguf-q4_k on ffn_down: what
llama.cpp's Q4_K_M is made of on this width) — 128 x 512 calibration windows; llama.cpp's
Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q4_K_M of our f32 export. ``--rows`` picks a subset.
Ours are exported bit-exact (``slimline export``) and verified in llama.cpp. Quality: perplexity
computed from llama.cpp's own logits on the python-docs eval windows and on Hamlet. Speed:
prefill of 512 tokens and greedy decode of 64 tokens after a 32-token prompt, every
(model, engine) pair once per round, interleaved A B C ..., median over rounds after a warm-up
round. Beside decode: the bytes each decoded token reads (all block weights + the head, the
tied embedding in full) and the bound that this machine's measured read bandwidth puts on it.
Results go to ``--json`` after every step, so a cut-off run still leaves figures.
"""

from __future__ import annotations

import argparse
import copy
import json
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

RESULTS: dict[str, Any] = {}
# llama_ftype: MOSTLY_Q8_0, _Q4_0, _Q4_1, _Q5_0, _Q4_K_M (on SmolLM2's 576-wide rows llama.cpp
# falls back from Q4_K to Q5_0 and from Q6_K to Q8_0: only ffn_down can hold K-quant blocks)
LLAMA_FTYPE = {"q8_0": 7, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q4_k_m": 15}


def dump(path: str | None) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(RESULTS, indent=2, default=str))
        os.replace(tmp, path)


def llama_quantize(src: Path, dst: Path, qtype: str, threads: int) -> None:
    """llama.cpp's own quantizer (its defaults: Q8_0/Q6_K for the tied embedding and so on)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPE[qtype]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({qtype}) returned {rc}")


def speed_summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's interleaved ``measure`` rounds: median, min and max decode tok/s and
    prefill ms over every timing, and the peak memory (also used by engines_onnx.py)."""
    dec = [x for r in rs for x in r["timings"]["decode_tok_s"]]
    pre = [x for r in rs for x in r["timings"]["prefill_ms"]]
    return {
        "version": rs[0]["env"]["version"],
        "decode_tok_s": statistics.median(dec),
        "decode_tok_s_min": min(dec),
        "decode_tok_s_max": max(dec),
        "prefill_ms": statistics.median(pre),
        "prefill_ms_min": min(pre),
        "prefill_ms_max": max(pre),
        "peak_mb": max(r["metrics"]["memory/peak_mb"] for r in rs),
    }


def ppl_in_engine(engine: Any, windows: torch.Tensor) -> float:
    from slimline.export.verify import perplexity

    nll, n = 0.0, 0
    for row in windows:  # one window at a time: a [T, 49152] fp32 block each
        logits = engine.logits(row[None])
        p = perplexity(logits, row[None])
        nll += (row.numel() - 1) * float(torch.log(torch.tensor(p)))
        n += row.numel() - 1
    return float(torch.exp(torch.tensor(nll / n)))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--smoke", action="store_true", help="2 blocks, tiny settings: checks the script"
    )
    ap.add_argument("--eval", type=int, default=64, help="eval windows per text (64)")
    ap.add_argument("--calib", type=int, default=128, help="GPTQ calibration windows (128)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (5)")
    ap.add_argument(
        "--calib-source",
        default="python-docs+shakespeare",
        help="calibration text (both domains by default: Python docs alone overfits them)",
    )
    ap.add_argument(
        "--no-speed", action="store_true", help="quality and sizes only (on a busy machine)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write results here after every step")
    ap.add_argument("--out-dir", default=None, help="keep the GGUF files here (default: temp)")
    ap.add_argument(
        "--rows",
        default=None,
        help="comma-separated subset, e.g. ours-gptq-q4_0,llama.cpp-q4_0 (fp32 always runs)",
    )
    args = ap.parse_args()

    from slimline.data import calibration_blocks, eval_blocks
    from slimline.engines.bound import gguf_bytes_per_token, read_bandwidth_gb_s
    from slimline.engines.llamacpp import LlamaCppEngine
    from slimline.engines.torch_engine import TorchEngine
    from slimline.export import export_gguf
    from slimline.models import load_model, truncate
    from slimline.quant import Gptq, Rtn, quantize

    seq, prompt, new, calib_len = 512, 32, 64, 512
    lm = load_model("smollm2-135m")
    if args.smoke:
        lm = truncate(lm, 2)
        args.eval, args.calib, args.rounds = 2, 8, 1
        seq, prompt, new, calib_len = 64, 8, 8, 64
    torch.set_num_threads(args.threads)
    tok = lm.tokenizer
    ev = {
        "python-docs": eval_blocks(tok, "python-docs", seq_len=seq, max_blocks=args.eval),
        "shakespeare": eval_blocks(tok, "shakespeare", seq_len=seq, max_blocks=args.eval),
    }
    calib = calibration_blocks(tok, args.calib_source, n=args.calib, seq_len=calib_len, seed=0)
    RESULTS["settings"] = {
        "model": lm.source,
        "blocks": lm.arch.n_blocks(lm.model.config),
        "threads": args.threads,
        "eval_windows": {k: int(v.shape[0]) for k, v in ev.items()},
        "seq_len": seq,
        "prompt_len": prompt,
        "new_tokens": new,
        "rounds": args.rounds,
        "calib": args.calib,
        "calib_source": args.calib_source,
    }
    RESULTS["bandwidth_gb_s"] = read_bandwidth_gb_s(args.threads)
    dump(args.json)

    tmp = tempfile.TemporaryDirectory(prefix="bench-engines-")
    out = Path(args.out_dir or tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    torch_models: dict[str, Any] = {"fp32": lm.model}
    files: dict[str, Path] = {}
    RESULTS["models"] = {}

    def export(key: str, model: Any, qtype: str | None = None) -> None:
        t0 = time.perf_counter()
        res = export_gguf(model, tok, out / f"{key}.gguf", qtype=qtype, threads=args.threads)
        v = res.record["verify"]
        RESULTS["models"][key] = {
            "bytes": res.record["bytes"],
            "type_counts": res.record["type_counts"],
            "exact_tensors": len(res.record["exact"]),
            "requantized_tensors": len(res.record["requantized"]),
            "verify_same_weights_kl": v["same_weights"]["kl"],
            "verify_engine": v["engine"],
            "export_s": time.perf_counter() - t0,
        }
        files[key] = res.path
        dump(args.json)

    export("fp32", lm.model, qtype="f32")  # the f32 file llama.cpp's quantizer starts from
    down = "re:.*mlp\\.down_proj"
    recipes = {
        "ours-rtn-q8_0": [(Rtn(grid="gguf-q8_0"), None)],
        "ours-gptq-q4_0": [(Gptq(grid="gguf-q4_0"), calib)],
        "ours-gptq-q4_1": [(Gptq(grid="gguf-q4_1"), calib)],
        "ours-gptq-q5_0": [(Gptq(grid="gguf-q5_0"), calib)],
        "ours-gptq-k-mix": [
            (Gptq(grid="gguf-q5_0", ignore=["lm_head", down]), calib),
            (Gptq(grid="gguf-q4_k", targets=[down]), calib),
        ],
    }
    rows = set(args.rows.split(",")) if args.rows else None
    for key, stages in recipes.items():
        if rows is not None and key not in rows:
            continue
        m = copy.deepcopy(lm.model)
        t0 = time.perf_counter()
        for cfg, data in stages:
            quantize(m, cfg, data=data)
        secs = time.perf_counter() - t0
        torch_models[key] = m
        export(key, m)
        RESULTS["models"][key]["quantize_s"] = secs
    for qt in LLAMA_FTYPE:
        if rows is not None and f"llama.cpp-{qt}" not in rows:
            continue
        key = f"llama.cpp-{qt}"
        dst = out / f"{key}.gguf"
        llama_quantize(files["fp32"], dst, qt, args.threads)
        files[key] = dst
        RESULTS["models"][key] = {"bytes": dst.stat().st_size}
    for key, path in files.items():
        RESULTS["models"][key]["bytes_per_token"] = gguf_bytes_per_token(path)
    dump(args.json)

    # quality inside llama.cpp (and torch fp32 as the reference)
    for key, path in files.items():
        with LlamaCppEngine(path, threads=args.threads, n_ctx=seq) as eng:
            for name, w in ev.items():
                RESULTS["models"][key][f"ppl/{name}"] = ppl_in_engine(eng, w)
        dump(args.json)
    te = TorchEngine(lm, threads=args.threads)
    RESULTS["torch_fp32_ppl"] = {f"ppl/{n}": ppl_in_engine(te, w) for n, w in ev.items()}
    dump(args.json)

    if args.no_speed:
        return
    # speed: every (model, engine) pair once per round, interleaved
    engines: dict[str, Any] = {
        f"torch:{k}": TorchEngine(m, args.threads, tok) for k, m in torch_models.items()
    }
    n_ctx = max(seq, prompt + new)
    for key, path in files.items():
        engines[f"llamacpp:{key}"] = LlamaCppEngine(path, threads=args.threads, n_ctx=n_ctx)
    runs: dict[str, list[dict]] = {k: [] for k in engines}
    for r in range(args.rounds):
        for key, eng in engines.items():
            runs[key].append(
                eng.measure(
                    seq_len=seq, prompt_len=prompt, new_tokens=new, repeats=1, warmup=int(r == 0)
                )
            )
    speed = {}
    for key, rs in runs.items():
        speed[key] = {"engine": rs[0]["env"]["engine"], **speed_summary(rs)}
    RESULTS["speed"] = speed
    for eng in engines.values():
        eng.close()
    dump(args.json)

    bw = RESULTS["bandwidth_gb_s"]
    base = speed["torch:fp32"]
    print(f"\nread bandwidth {bw:.1f} GB/s ({args.threads} threads); torch fp32 eager = 1.00x\n")
    print(
        "| model | engine | decode tok/s | x torch fp32 | bound tok/s | % of bound | prefill ms | ppl python-docs | ppl shakespeare | MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, s in speed.items():
        eng, model = key.split(":", 1)
        m = RESULTS["models"].get(model, {})
        bpt = m.get("bytes_per_token")
        bound = bw * 1e9 / bpt if eng == "llamacpp" and bpt else None
        ppl = m if eng == "llamacpp" else (RESULTS["torch_fp32_ppl"] if model == "fp32" else {})
        b_txt = "" if bound is None else f"{bound:.0f}"
        share = "" if bound is None else f"{100 * s['decode_tok_s'] / bound:.0f}%"
        print(
            f"| {model} | {eng} {s['version']} | {s['decode_tok_s']:.1f} | "
            f"{s['decode_tok_s'] / base['decode_tok_s']:.2f} | {b_txt} | {share} | "
            f"{s['prefill_ms']:.0f} | {ppl.get('ppl/python-docs', float('nan')):.3f} | "
            f"{ppl.get('ppl/shakespeare', float('nan')):.3f} | "
            f"{m['bytes'] / 1e6 if eng == 'llamacpp' else float('nan'):.1f} |"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
