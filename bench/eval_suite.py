"""The default evaluation suite on SmolLM2-135M: fp32 vs 8-bit RTN vs 4-bit (RTN or GPTQ).

Prints one row per model: gates passed/failed, the metrics that moved most against the fp32
reference (failed gates first), and the suite's runtime. The fp32 reference's answers are computed
once and shared (``memo``), so each later row times only the compressed model plus the KL tail.

    python bench/eval_suite.py                    # full default suite (minutes per model)
    python bench/eval_suite.py --limit 2 --quick  # smoke: 2 items per task, tiny windows
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # as the CLI: our table says enough
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from rich.console import Console
from rich.table import Table

from slimline.data import calibration_blocks
from slimline.eval import TorchEngine, run_suite
from slimline.models import load_model
from slimline.quant import Gptq, Rtn, quantize

QUICK = {
    "tail": {"windows": 1, "seq_len": 128},
    "domain": {"windows": 1, "seq_len": 128},
    "longctx": {"lengths": (512,), "n": 1},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--suite", default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="items per task (smoke runs)")
    p.add_argument("--quick", action="store_true", help="tiny windows and one short passkey")
    p.add_argument("--gptq", action="store_true", help="4-bit GPTQ instead of 4-bit RTN")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    base = load_model(args.model)
    models = {"fp32": base}
    for bits in (8, 4):
        m = copy.deepcopy(base)
        if bits == 4 and args.gptq:
            calib = calibration_blocks(base.tokenizer, "python-docs", n=128, seq_len=512, seed=0)
            quantize(m.model, Gptq(bits=4, group_size=128), data=calib)
            models["gptq-w4g128"] = m
        else:
            quantize(m.model, Rtn(bits=bits, group_size=128))
            models[f"rtn-w{bits}g128"] = m
    ref = TorchEngine(base)
    memo: dict = {}
    over = QUICK if args.quick else None
    table = Table(title=f"suite {args.suite} on {args.model} (torch, {args.threads} threads)")
    for col in ("model", "gates", "failed", "moved most (value / reference)", "seconds"):
        table.add_column(col)
    for name, m in models.items():
        t0 = time.perf_counter()
        r = run_suite(
            m, suite=args.suite, reference=ref, overrides=over, limit=args.limit, memo=memo
        )
        secs = time.perf_counter() - t0
        moved = sorted(
            (
                (abs(r.metrics[k] / r.reference[k] - 1), k)
                for k in r.metrics
                if k in r.reference and r.reference[k] not in (0, 0.0)
            ),
            reverse=True,
        )[:3]
        table.add_row(
            name,
            f"{sum(v['passed'] for v in r.verdicts)}/{len(r.verdicts)}",
            ", ".join(f"{v['metric']}={v['value']:.3g}" for v in r.failed()) or "-",
            ", ".join(f"{k} {r.metrics[k]:.3g}/{r.reference[k]:.3g}" for _, k in moved),
            f"{secs:.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
