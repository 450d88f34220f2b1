"""Where GPTQ's time goes, and how far it is from its FLOP floor on this machine (issue 15).

    python bench/gptq_profile.py --json bench/results/gptq_profile.json    # full protocol
    python bench/gptq_profile.py --calib 16                                # a quick look

Runs ``compress_streamed`` (what ``slimline quantize smollm2-135m --method gptq --bits 4
--group-size 64 --stream`` runs) in this process with timers around each phase: reading and
writing parts, the capture pass, the statistics forward, the Hessian products, the clip search,
the column solve, the layer-error records, packing, and the forward that feeds the next block.
Then the floor: the GEMM work GPTQ cannot avoid (two passes of every calibration token through
every block, plus one ``x^T x`` per distinct layer input) divided by the fp32 GEMM rate measured
here, at this model's shapes, in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SLIMLINE_QUIET", "1")

import torch

SECONDS: dict[str, float] = defaultdict(float)


ACTIVE: set[str] = set()


def timed(owner: Any, attr: str, phase: str) -> None:
    """Wrap ``owner.attr`` so its wall time adds to ``SECONDS[phase]`` (once: a call made while
    the phase is already timed, recursive or nested, is not counted again)."""
    fn: Callable[..., Any] = getattr(owner, attr)

    def wrapper(*a: Any, **k: Any) -> Any:
        if phase in ACTIVE:
            return fn(*a, **k)
        ACTIVE.add(phase)
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            SECONDS[phase] += time.perf_counter() - t0
            ACTIVE.discard(phase)

    setattr(owner, attr, wrapper)


def gemm_rate(m: int, k: int, n: int, seconds: float = 2.0) -> float:
    """fp32 GFLOP/s of ``[m, k] @ [k, n]`` on this machine, best of repeated runs."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
    return best


def floor(cfg: Any, tokens: int, seq_len: int) -> dict[str, float]:
    """The GEMM FLOPs GPTQ cannot avoid, and the seconds they take at the measured rate."""
    h, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = h // heads
    params = h * h * 2 + 2 * h * kv * hd + 3 * h * f  # q, o, k, v, gate, up, down
    attn = 2 * 2 * heads * hd * (seq_len + 1) / 2  # QK^T and AV over the causal half, per token
    fwd = tokens * n * (2 * params + attn)
    hess = (
        tokens * n * 2 * (3 * h * h + f * f)
    )  # x^T x per distinct input: attn-in, o-in, mlp-in, down-in
    # the rates at this model's shapes: a batch of 8 x 512 tokens through the block's matmuls
    bt = 8 * seq_len
    rate_fwd = min(gemm_rate(bt, h, h), gemm_rate(bt, h, f), gemm_rate(bt, f, h))
    rate_hess = min(gemm_rate(h, bt, h), gemm_rate(f, bt, f))
    return {
        "forward_tflop": 2 * fwd / 1e12,
        "hessian_tflop": hess / 1e12,
        "gemm_gflops_forward_shapes": round(rate_fwd, 1),
        "gemm_gflops_hessian_shapes": round(rate_hess, 1),
        "floor_s": round(2 * fwd / (rate_fwd * 1e9) + hess / (rate_hess * 1e9), 1),
        "floor_s_symmetric_hessians": round(
            2 * fwd / (rate_fwd * 1e9) + hess / 2 / (rate_hess * 1e9), 1
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=128, help="calibration windows (of 512)")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()

    from slimline.calib import engine as E
    from slimline.calib import stream as S
    from slimline.data import calibration_blocks
    from slimline.models.bundled import bundled_path
    from slimline.quant import gptq as G
    from slimline.quant import grid

    src = bundled_path("smollm2-135m")
    timed(S.BlockSource, "load", "read parts")
    timed(S.BlockSource, "write", "write parts")
    timed(E, "capture_inputs", "capture pass")
    timed(E.BlockStep, "run", "statistics forward (incl. Hessians)")
    timed(G._HessianAccumulator, "add", "Hessian x^T x")
    timed(G, "gptq_quantize", "solve (incl. clip search)")
    timed(grid, "search_qparams", "clip search")
    timed(G, "layer_error", "error records")
    timed(G, "rtn_error", "error records")
    timed(E.BlockStep, "forward", "forward to the next block")
    out = Path(tempfile.mkdtemp(prefix="gptq-profile-"))
    try:
        t0 = time.perf_counter()
        res = S.compress_streamed(
            src,
            G.Gptq(bits=4, group_size=64),
            out / "q",
            calib=lambda tok: calibration_blocks(tok, "python-docs", n=args.calib, seq_len=512),
        )
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    s = dict(SECONDS)
    phases = {
        "read + write parts": s["read parts"] + s["write parts"],
        "capture pass": s["capture pass"],
        "statistics forward": s["statistics forward (incl. Hessians)"] - s["Hessian x^T x"],
        "Hessian x^T x": s["Hessian x^T x"],
        "clip search": s["clip search"],
        "column solve": s["solve (incl. clip search)"] - s["clip search"],
        "error records": s["error records"],
        "forward to the next block": s["forward to the next block"],
    }
    phases["other (packing, records, glue)"] = wall - sum(phases.values())
    from transformers import AutoConfig

    fl = floor(AutoConfig.from_pretrained(str(src)), args.calib * 512, 512)
    result = {
        "calib_windows": args.calib,
        "wall_s": round(wall, 1),
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "peak_rss_mb": res.peak_rss_mb,
        **fl,
        "floor_over_wall": round(fl["floor_s"] / wall, 3),
    }
    for k, v in phases.items():
        print(f"{k:34s} {v:8.1f} s  {100 * v / wall:5.1f} %")
    print(f"{'wall':34s} {wall:8.1f} s")
    print(json.dumps({k: v for k, v in result.items() if k != "phases_s"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
