"""Quant part B on SmolLM2-135M-Instruct (BENCH.md protocol): W8A8 with/without SmoothQuant vs
fp32 vs torch's own dynamic int8 (``quantize_dynamic``, the peer in PEERS.md), and the KV cache's
memory at growing context (fp32 vs int8 vs int4) with its effect on next-token predictions.

    python bench/quant_b.py --quick    # 8 eval / 16 calib windows, contexts 256 1024
    python bench/quant_b.py            # 64 eval / 128 calib windows, contexts 512 1024 2048

Every figure is measured in this one run; prefill times are interleaved (A B A B ...).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SLIMLINE_QUIET", "1")

import torch
from rich.console import Console
from rich.table import Table

from slimline.data import calibration_blocks, eval_blocks
from slimline.eval import hf_perplexity
from slimline.models import load_model
from slimline.quant.kvcache import kv_cache_fidelity, kv_cache_memory
from slimline.quant.smoothquant import W8A8, quantize_w8a8

console = Console()


def w8a8_table(
    lm, calib, evals, repeats: int, dump=lambda rows: None, threads: int = 2, static: bool = True
) -> list[dict]:
    """Perplexity of each W8A8 variant, then prefill and decode of the timed ones beside fp32
    (``profile_paired``: A B A B per round). ``fbgemm`` rows are the same quantized weights as the
    ``sim`` row above them, run on torch's int8 CPU kernel instead of the exact simulation."""
    from slimline.profile import profile_paired
    from slimline.quant import set_w8a8_backend

    configs = {  # name: (config, backend, timed)
        "fp32": (None, None, True),
        "torch quantize_dynamic int8 (peer)": ("peer", None, True),
        "W8A8 dynamic, no smoothing": (W8A8(smooth_alpha=None), "sim", False),
        "W8A8 dynamic, no smoothing, fbgemm": ("same", "fbgemm", True),
        "W8A8 dynamic + SmoothQuant 0.5": (W8A8(smooth_alpha=0.5), "sim", True),
        "W8A8 dynamic + SmoothQuant 0.5, fbgemm": ("same", "fbgemm", True),
        "W8A8 dynamic + SmoothQuant 0.8": (W8A8(smooth_alpha=0.8), "sim", False),
        "W8A8 dynamic + SmoothQuant 0.8, fbgemm": ("same", "fbgemm", True),
        "W8A8 static (mse) + SmoothQuant 0.5": (
            W8A8(act="static", observer="mse", smooth_alpha=0.5),
            "sim",
            False,
        ),
    }
    if not static:  # its MSE observer takes minutes; its accuracy is in quant.md already
        del configs["W8A8 static (mse) + SmoothQuant 0.5"]
    models, rows, timed = {}, [], []
    prev = None
    for name, (cfg, backend, is_timed) in configs.items():
        t0 = time.perf_counter()
        if cfg == "same":  # the previous row's weights on another kernel
            m = copy.deepcopy(prev)
            set_w8a8_backend(m, backend)
        else:
            m = copy.deepcopy(lm.model)
            if cfg == "peer":
                m = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
            elif cfg is not None:
                quantize_w8a8(m, calib, cfg)
        secs = time.perf_counter() - t0
        prev = m
        ppl = hf_perplexity(m, evals)
        if is_timed:
            models[name] = m
            timed.append(name)
        rows.append({"config": name, "ppl/python-docs": ppl, "compress_s": secs})
        console.print(f"{name}: ppl {ppl:.3f} ({secs:.1f} s to quantize)")
        dump(rows)  # a cut-off run still leaves the perplexities
    profs = profile_paired(
        [models[n] for n in timed], rounds=repeats, threads=threads, tokenizer=lm.tokenizer
    )
    prof = dict(zip(timed, profs, strict=True))
    base = prof["fp32"]
    for r in rows:
        r["ppl_ratio"] = r["ppl/python-docs"] / rows[0]["ppl/python-docs"]
        p = prof.get(r["config"])
        if p is None:
            continue
        m = p.metrics
        r["prefill_ms"] = m["latency/prefill_ms"]
        r["prefill_min_max_ms"] = (m["latency/prefill_ms_min"], m["latency/prefill_ms_max"])
        r["prefill_vs_fp32"] = m["latency/prefill_ms"] / base.metrics["latency/prefill_ms"]
        r["decode_tok_s"] = m["latency/decode_tok_s"]
        r["decode_min_max"] = (m["latency/decode_tok_s_min"], m["latency/decode_tok_s_max"])
        r["decode_vs_fp32"] = m["latency/decode_tok_s"] / base.metrics["latency/decode_tok_s"]
        pairs = zip(base.timings["decode_tok_s"], p.timings["decode_tok_s"], strict=True)
        r["decode_paired_ratios"] = [b / a for a, b in pairs]
        pairs = zip(base.timings["prefill_ms"], p.timings["prefill_ms"], strict=True)
        r["prefill_paired_speedups"] = [a / b for a, b in pairs]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--skip-w8a8", action="store_true")
    ap.add_argument("--skip-kv", action="store_true")
    ap.add_argument("--skip-static", action="store_true", help="no static-activation W8A8 row")
    ap.add_argument("--eval", type=int, default=None, help="eval windows (64; quick 8)")
    ap.add_argument("--calib", type=int, default=None, help="calibration windows (128; quick 16)")
    args = ap.parse_args()
    # quantization and perplexity at --threads too (use 1 on a machine shared with other jobs)
    torch.set_num_threads(args.threads)
    n_eval, n_calib = (8, 16) if args.quick else (64, 128)
    n_eval, n_calib = args.eval or n_eval, args.calib or n_calib
    contexts = [256, 1024] if args.quick else [512, 1024, 2048]
    repeats = 3 if args.quick else 5
    lm = load_model("smollm2-135m")
    out: dict = {"mode": "quick" if args.quick else "full", "threads": args.threads}

    if not args.skip_w8a8:
        calib = calibration_blocks(lm.tokenizer, "python-docs", n=n_calib, seq_len=512, seed=0)
        evals = eval_blocks(lm.tokenizer, "python-docs", seq_len=512, max_blocks=n_eval)

        def dump(rows: list[dict]) -> None:
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump({**out, "w8a8_partial": rows}, fh, indent=2)

        rows = w8a8_table(lm, calib, evals, repeats, dump, args.threads, not args.skip_static)
        t = Table(title=f"W8A8 on SmolLM2-135M ({n_eval} eval windows x 512, {n_calib} calib)")
        cols = ("config", "ppl", "ratio", "prefill ms", "time vs fp32", "decode tok/s", "vs fp32")
        for c in (*cols, "quantize s"):
            t.add_column(c)
        for r in rows:
            timed = "prefill_ms" in r
            t.add_row(
                r["config"],
                f"{r['ppl/python-docs']:.3f}",
                f"{r['ppl_ratio']:.3f}",
                f"{r['prefill_ms']:.0f} ({r['prefill_min_max_ms'][0]:.0f}-{r['prefill_min_max_ms'][1]:.0f})"
                if timed
                else "-",
                f"{r['prefill_vs_fp32']:.2f}x" if timed else "-",
                f"{r['decode_tok_s']:.1f} ({r['decode_min_max'][0]:.1f}-{r['decode_min_max'][1]:.1f})"
                if timed
                else "-",
                f"{r['decode_vs_fp32']:.2f}x" if timed else "-",
                f"{r['compress_s']:.1f}",
            )
        console.print(t)
        out["w8a8"] = rows

    if not args.skip_kv:
        mem = kv_cache_memory(lm.model, contexts)
        per_tok = {
            r["bits"]: r["bytes"] / r["context"] for r in mem if r["context"] == contexts[-1]
        }
        ids = eval_blocks(lm.tokenizer, "python-docs", seq_len=512, max_blocks=1)
        n_tok = 96 if args.quick else 160
        fid = {
            b: kv_cache_fidelity(lm.model, ids[:, :n_tok], prompt_len=32, bits=b) for b in (8, 4)
        }
        t = Table(title="KV cache bytes on SmolLM2-135M (30 blocks, 3 kv-heads x 64), measured")
        for c in ("context", "fp32 MB", "int8 MB", "int4 MB", "int8 x", "int4 x"):
            t.add_column(c)
        by = {(r["context"], r["bits"]): r["bytes"] for r in mem}
        for n in contexts:
            t.add_row(
                str(n),
                f"{by[n, 32] / 1e6:.2f}",
                f"{by[n, 8] / 1e6:.2f}",
                f"{by[n, 4] / 1e6:.2f}",
                f"{by[n, 32] / by[n, 8]:.2f}",
                f"{by[n, 32] / by[n, 4]:.2f}",
            )
        for n in (4096, 8192):  # bytes are exactly linear in context: per-token x n
            t.add_row(
                f"{n} (per-token x n)",
                *(f"{per_tok[b] * n / 1e6:.2f}" for b in (32, 8, 4)),
                f"{per_tok[32] / per_tok[8]:.2f}",
                f"{per_tok[32] / per_tok[4]:.2f}",
            )
        console.print(t)
        for b, f in fid.items():
            console.print(
                f"int{b} cache, teacher-forced decode of {n_tok - 33} tokens: "
                f"top-1 agreement {f['agree/top1']:.3f}, KL {f['kl/teacher']:.2e}"
            )
        out["kv_memory"] = mem
        out["kv_fidelity"] = {str(k): v for k, v in fid.items()}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
