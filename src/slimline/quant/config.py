"""What RTN, GPTQ and AWQ share: the config fields, layer selection, validation and undo.

Every check that can fail (bits, group size against each layer's width, patterns that match
nothing, non-finite weights, too little calibration data) runs before the model is touched,
and ``Undo`` restores the model if anything fails half-way (e.g. NaN activations in block 7).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import field_validator, model_validator
from torch import nn

from slimline.core import (
    Context,
    SizeEffect,
    TechniqueConfig,
    require_selection,
    select_modules,
    set_submodule,
)
from slimline.errors import ConfigError, DataError
from slimline.models.arch import get_arch
from slimline.quant.grid import GRIDS, SUPPORTED_BITS, QuantScheme, check_weight, make_scheme


class WeightQuantConfig(TechniqueConfig):
    """Fields every weight quantizer takes. Empty ``targets``: every Linear inside the blocks."""

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = True
    grid: str | None = None
    targets: list[str] = []
    ignore: list[str] = ["lm_head"]

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        # an engine grid's own width (5-, 6-bit GGUF types) is allowed with that grid only
        if v not in SUPPORTED_BITS and v not in {b for b, _, _ in GRIDS.values()}:
            raise ConfigError(
                f"unsupported weight bit width {v}", f"use one of {list(SUPPORTED_BITS)}"
            )
        return v

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ConfigError(
                f"group_size must be positive, got {v}",
                "use e.g. 128, or None (--group-size 0 on the CLI) for per-channel",
            )
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: str | None) -> str | None:
        if v is not None and v not in GRIDS:
            raise ConfigError(
                f"unknown grid {v!r}",
                f"use one of: {', '.join(GRIDS)} (an engine's block format), or no grid",
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _grid_fixes_scheme(cls, data: Any) -> Any:
        """An engine grid fixes bits, group and symmetry: a contradicting value is refused, and
        the fields take the grid's values, so a saved config (run.json, recipe.yaml, manifest)
        says what was solved and reads back as the same config."""
        if not isinstance(data, dict) or data.get("grid") not in GRIDS:
            return data
        b, g, sym = GRIDS[data["grid"]]
        given = {"bits": b, "group_size": g, "symmetric": sym}
        clash = [f"{k}={data[k]}" for k, v in given.items() if k in data and data[k] != v]
        if clash:
            raise ConfigError(
                f"grid {data['grid']} is {b}-bit, group {g}, "
                f"{'symmetric' if sym else 'asymmetric'}; the config also sets {', '.join(clash)}",
                "drop bits/group_size/symmetric when a grid is given",
            )
        return data

    @model_validator(mode="after")
    def _plain_bits(self) -> WeightQuantConfig:
        if self.grid is not None:  # the grid's values, not marked as set (exclude_unset drops them)
            b, g, sym = GRIDS[self.grid]
            self.__dict__.update(bits=b, group_size=g, symmetric=sym)
        elif self.bits not in SUPPORTED_BITS:
            raise ConfigError(
                f"unsupported weight bit width {self.bits}",
                f"use one of {list(SUPPORTED_BITS)}, or an engine grid (e.g. gguf-q5_0)",
            )
        return self

    def size_effect(self) -> SizeEffect:
        """Codes of ``bits`` (an engine grid's bits) per block weight."""
        return SizeEffect(bits=GRIDS[self.grid][0] if self.grid else self.bits)

    def scheme(self) -> QuantScheme:
        """The grid to solve on; an engine ``grid`` fixes bits/group/symmetry (explicitly set
        values that contradict it are refused rather than silently overridden)."""
        if self.grid is None:
            return make_scheme(self.bits, self.group_size, self.symmetric)
        b, g, sym = GRIDS[self.grid]
        given = {"bits": b, "group_size": g, "symmetric": sym}
        clash = [
            f"{k}={getattr(self, k)}"
            for k, v in given.items()
            if k in self.model_fields_set and getattr(self, k) != v
        ]
        if clash:
            raise ConfigError(
                f"grid {self.grid} is {b}-bit, group {g}, "
                f"{'symmetric' if sym else 'asymmetric'}; the config also sets {', '.join(clash)}",
                "drop bits/group_size/symmetric when a grid is given",
            )
        return make_scheme(grid=self.grid)


def block_prefix(model: nn.Module) -> str | None:
    try:
        return get_arch(model).block_prefix(model)
    except Exception:  # an unknown family: RTN still works on any Linear
        return None


def select_linears(
    model: nn.Module, cfg: WeightQuantConfig, *, blocks_only: bool = False
) -> dict[str, nn.Linear]:
    """The Linear layers ``cfg`` selects, validated against the scheme (nothing is changed)."""
    prefix = block_prefix(model)
    within = [prefix] if prefix else None
    sel = select_modules(model, cfg.targets, cfg.ignore, within=within)
    sel = {n: m for n, m in sel.items() if isinstance(m, nn.Linear)}
    if blocks_only and prefix:
        sel = {n: m for n, m in sel.items() if n.startswith(prefix + ".")}
    require_selection(sel, cfg.targets or ["(every Linear in the blocks)"], "quantize")
    scheme = cfg.scheme()
    for name, m in sel.items():
        scheme.group(m.in_features)  # group_size > in_features raises here
        check_weight(m.weight.detach(), name)
    return sel  # type: ignore[return-value]


def calib_ids(ctx: Context, method: str, min_tokens: int) -> torch.Tensor:
    """The calibration token ids from ``ctx``, refused when missing, malformed or too few."""
    ids = ctx.calib
    if ids is None:
        raise DataError(
            f"{method} needs calibration data and none was given",
            "pass data=calibration_blocks(tokenizer, n=128, seq_len=512)",
        )
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype != torch.long:
        raise DataError(
            f"calibration data must be a [samples, tokens] LongTensor of token ids, got "
            f"{getattr(ids, 'shape', type(ids).__name__)} {getattr(ids, 'dtype', '')}",
            "use slimline.data.calibration_blocks",
        )
    if ids.numel() < min_tokens:
        raise DataError(
            f"{method} got {ids.numel()} calibration tokens ({ids.shape[0]} x {ids.shape[1]}), "
            f"needs at least {min_tokens}",
            "pass more calibration samples (--calib-samples) or longer ones (--seq-len)",
        )
    return ids


def check_finite_acts(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise DataError(
            f"the calibration activations entering {name} hold NaN/inf values",
            "check the model weights and the calibration text; the model was left unchanged",
        )


class Undo:
    """Remember how to put the model back; ``rollback()`` on failure, in reverse order."""

    def __init__(self, model: nn.Module):
        from slimline.calib.engine import STREAM_ATTR

        self.model = model
        self._steps: list[Callable[[], Any]] = []
        # a streamed model (slimline.calib.stream) is not rolled back layer by layer: a failed
        # run discards it whole. So a replaced layer's float weights are freed at once, not
        # kept until the block is written (an 8192-wide block: 268 MB)
        self.streamed = getattr(model, STREAM_ATTR, None) is not None

    def replace(self, name: str, new: nn.Module) -> None:
        old = self.model.get_submodule(name)
        set_submodule(self.model, name, new)
        if self.streamed:
            from slimline.calib.buffer import trim_heap

            for k, t in old._parameters.items():  # the module's own references only (ties stay)
                if t is not None:
                    meta = torch.empty_like(t, device="meta")
                    old._parameters[k] = nn.Parameter(meta, requires_grad=t.requires_grad)
            trim_heap()
            return
        self._steps.append(lambda: set_submodule(self.model, name, old))

    def save_tensor(self, t: torch.Tensor) -> None:
        copy = t.detach().clone()
        self._steps.append(lambda: t.data.copy_(copy))

    def rollback(self) -> None:
        for step in reversed(self._steps):
            step()
        self._steps.clear()


def layer_record(name: str, in_features: int, scheme: QuantScheme, **extra: Any) -> dict:
    return {"name": name, "ragged": scheme.ragged(in_features), **extra}


def summarize(model: nn.Module, layers: list[dict], scheme: QuantScheme) -> dict[str, Any]:
    """Record fields common to every method: scheme, layer count, ragged layers, packed bytes."""
    from slimline.quant.linear import quant_linears

    qls = quant_linears(model)
    ragged = [r["name"] for r in layers if r.get("ragged")]
    return {
        "scheme": scheme.label(),
        "layers": len(layers),
        "ragged_layers": ragged,
        "ragged_note": (
            f"{len(ragged)} layers have a shorter last group (width not a multiple of "
            f"{scheme.group_size}); all were quantized"
            if ragged
            else ""
        ),
        "packed_bytes": sum(m.nbytes() for m in qls.values()),
        "paths": sorted({m.path for m in qls.values()}),
        "per_layer": layers,
    }


def calibrated_apply(
    model: nn.Module,
    cfg: Any,
    ctx: Context,
    method: str,
    make_stats: Callable[[str, int], Any],
    quantize_block: Callable[[Any, dict[str, nn.Module], dict[str, Any], Undo, list[dict]], dict],
) -> dict[str, Any]:
    """The driver GPTQ and AWQ share: block by block on calibration data, gather each selected
    linear's input statistics (``make_stats(name, in_features).add(x)``), then let
    ``quantize_block(step, linears, stats, undo, layers)`` replace them; any failure restores the
    model exactly."""
    import time

    from slimline.calib import run_blocks

    t0 = time.perf_counter()
    label = method.upper()
    ids = calib_ids(ctx, label, cfg.min_calib_tokens)
    selected = select_linears(model, cfg, blocks_only=True)
    undo = Undo(model)
    layers: list[dict[str, Any]] = []

    def on_block(step: Any) -> dict[str, Any]:
        lins = {n: m for n, m in step.linears().items() if n in selected}
        if not lins:
            return {}
        stats = {n: make_stats(n, m.in_features) for n, m in lins.items()}
        memo: list[Any] = [None, None]  # the last input tensor and the layer that added it
        shares: dict[str, str] = {}  # layer -> the layer whose statistic it shares

        def hook(name: str, _m: nn.Module, inp: torch.Tensor, _out: Any) -> None:
            st = stats[name]
            if memo[0] is inp and getattr(st, "shareable", False):  # q/k/v, gate/up
                if name not in shares and not st.count:  # first batch: share from now on
                    shares[name] = memo[1]
                    stats[name] = stats[memo[1]]
                if shares.get(name) == memo[1]:
                    return  # the layer it shares with added this batch already
            if name in shares:
                raise RuntimeError(f"{name} no longer reads the input of {shares[name]}")
            st.add(inp)
            memo[0], memo[1] = inp, name

        with step.capture(lins, hook):
            step.run()
        memo.clear()
        return quantize_block(step, lins, stats, undo, layers)

    try:
        run_blocks(model, ids, on_block, batch_size=cfg.batch_size, device=ctx.device, desc=label)
    except BaseException:
        undo.rollback()
        raise
    return {
        "method": method,
        "seconds": time.perf_counter() - t0,
        "calib_tokens": int(ids.numel()),
        **summarize(model, layers, cfg.scheme()),
    }
