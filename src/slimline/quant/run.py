"""Load, calibrate, quantize, save: what ``slimline quantize`` does, as one library function."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from slimline.core import Context, TechniqueConfig, apply_technique
from slimline.errors import ConfigError, InputError
from slimline.quant.api import quantize
from slimline.quant.awq import Awq
from slimline.quant.config import WeightQuantConfig
from slimline.quant.gptq import Gptq
from slimline.quant.mixed import MixedPrecision
from slimline.quant.rtn import Rtn
from slimline.quant.smoothquant import W8A8

METHODS: dict[str, type[WeightQuantConfig]] = {"rtn": Rtn, "gptq": Gptq, "awq": Awq}
OTHER_METHODS = ("w8a8", "mixed")  # int8 weights and activations; per-layer bits under a budget


def make_quant_config(
    method: str,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = True,
    targets: list[str] | None = None,
    ignore: list[str] | None = None,
    smooth_alpha: float | None = 0.5,
    act: str = "dynamic",
    avg_bits: float = 4.0,
    kernel: str = "sim",
) -> TechniqueConfig:
    """The config for ``method`` (rtn | gptq | awq | w8a8 | mixed); ``group_size`` 0 or None = per
    channel. ``smooth_alpha``/``act``/``kernel`` are W8A8's, ``avg_bits`` is mixed precision's
    budget."""
    if method == "w8a8":
        kw8: dict[str, Any] = {"smooth_alpha": smooth_alpha, "act": act, "backend": kernel}
        if targets:
            kw8["targets"] = targets
        if ignore is not None:
            kw8["ignore"] = ignore
        return W8A8(**kw8)
    if method == "mixed":
        return MixedPrecision(
            avg_bits=avg_bits,
            group_size=None if group_size in (None, 0) else group_size,
            symmetric=symmetric,
            targets=targets or [],
            ignore=ignore if ignore is not None else ["lm_head"],
        )
    cls = METHODS.get(method)
    if cls is None:
        raise ConfigError(
            f"unknown quantization method {method!r}",
            f"use one of {[*METHODS, *OTHER_METHODS]}",
        )
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
    smooth_alpha: float | None = 0.5,
    act: str = "dynamic",
    avg_bits: float = 4.0,
    kernel: str = "sim",
) -> dict[str, Any]:
    """Quantize the model at ``model`` and save it as a slimline artifact at ``out``."""
    from slimline.artifact import save_artifact
    from slimline.models import load_model

    cfg = make_quant_config(
        method, bits, group_size, symmetric, targets, ignore, smooth_alpha, act, avg_bits, kernel
    )
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
    if isinstance(cfg, WeightQuantConfig):
        record = quantize(lm.model, cfg, ctx=ctx)
    else:
        with torch.no_grad():
            record = apply_technique(lm.model, cfg, ctx)
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
        "scheme": record.get("scheme", cfg.kind),
        "layers": record.get("layers", len(record.get("per_layer", []) or [])),
        "ragged_layers": len(record.get("ragged_layers", [])),
        "packed_bytes": record.get("packed_bytes"),
        "size_bytes": size,
        "digest": getattr(info, "digest", None),
        "seconds": round(seconds, 2),
    }
