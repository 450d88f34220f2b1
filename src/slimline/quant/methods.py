"""The quantization methods by their command-line names, and the config each set of flags makes.

``slimline quantize`` turns its flags into one config here and runs it as a one-stage recipe
(``slimline.recipe.compress``): loading, calibrating and saving live in the recipe runner only."""

from __future__ import annotations

from typing import Any

from slimline.core import TechniqueConfig
from slimline.errors import ConfigError
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
    grid: str | None = None,
    calib_batch: int | None = None,
) -> TechniqueConfig:
    """The config for ``method`` (rtn | gptq | awq | w8a8 | mixed); ``group_size`` 0 or None = per
    channel. ``smooth_alpha``/``act``/``kernel`` are W8A8's, ``avg_bits`` is mixed precision's
    budget. ``grid`` (``gguf-q4_0`` ...) solves on an engine's block grid, which fixes bits,
    group and symmetry (rtn, gptq, awq). ``calib_batch``: calibration windows per forward
    (default: the method's own), the knob for a wide model's forward temporaries."""
    cfg = _make(method, bits, group_size, symmetric, targets, ignore, smooth_alpha, act,
                avg_bits, kernel, grid)  # fmt: skip
    if calib_batch is None:
        return cfg
    if "batch_size" not in type(cfg).model_fields:
        raise ConfigError(
            f"--calib-batch applies to methods that run calibration data, not {method}",
            "drop --calib-batch (round-to-nearest reads no data)",
        )
    return type(cfg).model_validate({**cfg.model_dump(), "batch_size": calib_batch})


def _make(
    method: str,
    bits: int,
    group_size: int | None,
    symmetric: bool,
    targets: list[str] | None,
    ignore: list[str] | None,
    smooth_alpha: float | None,
    act: str,
    avg_bits: float,
    kernel: str,
    grid: str | None,
) -> TechniqueConfig:
    if grid is not None and method not in METHODS:
        raise ConfigError(
            f"--grid applies to {', '.join(METHODS)}, not {method}",
            f"use --method {' / '.join(METHODS)} with --grid, or drop --grid",
        )
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
    kw: dict[str, Any] = (
        {"grid": grid}
        if grid is not None
        else {
            "bits": bits,
            "group_size": None if group_size in (None, 0) else group_size,
            "symmetric": symmetric,
        }
    )
    if targets:
        kw["targets"] = targets
    if ignore is not None:
        kw["ignore"] = ignore
    return cls(**kw)
