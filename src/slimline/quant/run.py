"""Load, calibrate, quantize, save: what ``slimline quantize`` does, as one library function."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from slimline.core import Context
from slimline.errors import ConfigError, InputError
from slimline.quant.api import quantize
from slimline.quant.awq import Awq
from slimline.quant.config import WeightQuantConfig
from slimline.quant.gptq import Gptq
from slimline.quant.rtn import Rtn

METHODS: dict[str, type[WeightQuantConfig]] = {"rtn": Rtn, "gptq": Gptq, "awq": Awq}


def make_quant_config(
    method: str,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = True,
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
) -> WeightQuantConfig:
    """The config for ``method`` (rtn | gptq | awq); ``group_size`` 0 or None = per channel."""
    cls = METHODS.get(method)
    if cls is None:
        raise ConfigError(f"unknown quantization method {method!r}", f"use one of {list(METHODS)}")
    kw: dict[str, Any] = {
        "bits": bits,
        "group_size": None if group_size in (None, 0) else group_size,
        "symmetric": symmetric,
    }
    if targets:
        kw["targets"] = targets
    if ignore is not None:
        kw["ignore"] = ignore
    return cls(**kw)


def quantize_model(
    model: str,
    out: str | os.PathLike[str],
    *,
    method: str = "gptq",
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = True,
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
    calib: str = "python-docs",
    calib_samples: int = 128,
    seq_len: int = 512,
    seed: int = 0,
) -> dict[str, Any]:
    """Quantize the model at ``model`` and save it as a slimline artifact at ``out``."""
    from slimline.artifact import save_artifact
    from slimline.models import load_model

    cfg = make_quant_config(method, bits, group_size, symmetric, targets, ignore)
    if Path(out).exists():
        raise InputError(f"{out} already exists", "choose a new output directory")
    lm = load_model(model)
    ctx = Context(tokenizer=lm.tokenizer, seed=seed)
    fingerprint = None
    if method != "rtn":
        from slimline.data import calibration_blocks
        from slimline.data.blocks import fingerprint as data_fingerprint

        ctx.calib = calibration_blocks(
            lm.tokenizer, calib, n=calib_samples, seq_len=seq_len, seed=seed
        )
        fingerprint = data_fingerprint(ctx.calib)
    t0 = time.perf_counter()
    record = quantize(lm.model, cfg, ctx=ctx)
    seconds = time.perf_counter() - t0
    manifest: dict[str, Any] = {
        "stages": [{k: v for k, v in record.items() if k != "per_layer"}],
        "seed": seed,
        "source": str(model),
    }
    if fingerprint:
        manifest["data_fingerprint"] = fingerprint
        manifest["calibration"] = {"source": calib, "samples": calib_samples, "seq_len": seq_len}
    info = save_artifact(lm, lm.tokenizer, out, manifest=manifest)
    size = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    return {
        "out": str(out),
        "method": method,
        "scheme": record["scheme"],
        "layers": record["layers"],
        "ragged_layers": len(record["ragged_layers"]),
        "packed_bytes": record["packed_bytes"],
        "size_bytes": size,
        "digest": getattr(info, "digest", None),
        "seconds": round(seconds, 2),
    }
