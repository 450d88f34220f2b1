"""The integer grid every weight quantizer in slimline shares: scheme, scales, rounding.

A 2-D weight ``[out, in]`` is cut along ``in`` into groups of ``group_size`` columns (``None``:
one group per output row, i.e. per-channel). Each (row, group) gets a float ``scale`` and an
integer ``zero``; codes are unsigned ``0 .. 2^bits - 1`` and ``w_hat = (q - zero) * scale``.

* symmetric: ``zero = 2^(bits-1)`` fixed, ``scale = 2 * max|w| / (2^bits - 1)`` (the GPTQ /
  torchao convention: the grid spans ``[-max|w|, +max|w|]`` using all ``2^bits`` levels).
* asymmetric: ``scale = (max - min) / (2^bits - 1)`` over a range that always includes 0,
  ``zero = round(-min / scale)``, so 0.0 stays exactly representable.

When ``group_size`` does not divide ``in`` the last group is shorter (a *ragged* group).
SmolLM2's width 576 is not a multiple of 128: llm-compressor refuses such layers, torchao skips
them and quanto silently changes the group size; we quantize every layer and ``ragged(in)``
reports it, so records can say so.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from slimline.errors import ConfigError, DataError

Bits = Literal[2, 3, 4, 8]
SUPPORTED_BITS = (2, 3, 4, 8)


class QuantScheme(BaseModel):
    """How a weight is quantized: width, grouping along the input dim, symmetric or not."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    bits: Bits = 4
    group_size: int | None = Field(default=128, gt=0)
    symmetric: bool = True

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def group(self, in_features: int) -> int:
        """Effective group width for a layer with ``in_features`` columns (validated)."""
        if self.group_size is None:
            return in_features
        if self.group_size > in_features:
            raise ConfigError(
                f"group_size {self.group_size} is larger than the layer's {in_features} inputs",
                f"use group_size <= {in_features}, or group_size=None for per-channel",
            )
        return self.group_size

    def n_groups(self, in_features: int) -> int:
        return math.ceil(in_features / self.group(in_features))

    def ragged(self, in_features: int) -> bool:
        """True when the last group is shorter than the others."""
        return in_features % self.group(in_features) != 0

    def label(self) -> str:
        g = "ch" if self.group_size is None else f"g{self.group_size}"
        return f"w{self.bits}{g}{'' if self.symmetric else 'a'}"


def make_scheme(bits: int, group_size: int | None, symmetric: bool = True) -> QuantScheme:
    """A validated scheme, with slimline errors instead of pydantic ones for plain arguments."""
    if bits not in SUPPORTED_BITS:
        raise ConfigError(
            f"unsupported weight bit width {bits}", f"use one of {list(SUPPORTED_BITS)}"
        )
    if group_size is not None and group_size <= 0:
        raise ConfigError(
            f"group_size must be positive, got {group_size}",
            "use e.g. 128, or None for one group per output channel",
        )
    return QuantScheme(bits=bits, group_size=group_size, symmetric=symmetric)


def check_weight(w: torch.Tensor, name: str = "weight") -> None:
    """Refuse what cannot be quantized: not 2-D, empty, or holding NaN/inf."""
    if w.dim() != 2 or w.numel() == 0:
        raise ConfigError(
            f"{name} has shape {tuple(w.shape)}; weight quantization needs a 2-D [out, in] matrix",
            "target nn.Linear layers only",
        )
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise DataError(
            f"{name} holds {bad} NaN/inf values; its quantization grid would be undefined",
            "fix or reload the model weights before quantizing",
        )


def group_index(in_features: int, scheme: QuantScheme) -> torch.Tensor:
    """Group number of each input column: ``[in]`` long tensor (last group may be short)."""
    return torch.arange(in_features) // scheme.group(in_features)


def expand(t: torch.Tensor, in_features: int, scheme: QuantScheme) -> torch.Tensor:
    """Per-group ``[out, n_groups]`` values broadcast to per-column ``[out, in]``."""
    return t[:, group_index(in_features, scheme).to(t.device)]


def _group_reduce(w: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of each (row, group): ``[out, n_groups]`` each, ragged last group included."""
    out, n = w.shape
    g = scheme.group(n)
    full = (n // g) * g
    mins, maxs = [], []
    if full:
        blocks = w[:, :full].reshape(out, full // g, g)
        mins.append(blocks.amin(-1))
        maxs.append(blocks.amax(-1))
    if full < n:
        tail = w[:, full:]
        mins.append(tail.amin(-1, keepdim=True))
        maxs.append(tail.amax(-1, keepdim=True))
    return torch.cat(mins, 1), torch.cat(maxs, 1)


def qparams_from_range(
    lo: torch.Tensor, hi: torch.Tensor, scheme: QuantScheme
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero for ranges ``[lo, hi]`` (any matching shapes); used for clip searches too."""
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    tiny = 1e-10  # an all-zero group: any positive scale reproduces it exactly
    if scheme.symmetric:
        amax = torch.maximum(-lo, hi)
        scale = (2 * amax / scheme.qmax).clamp(min=tiny)
        zero = torch.full_like(scale, float(2 ** (scheme.bits - 1)))
    else:
        scale = ((hi - lo) / scheme.qmax).clamp(min=tiny)
        zero = torch.round(-lo / scale).clamp(0, scheme.qmax)
    return scale, zero


def qparams(w: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero of ``w [out, in]``: two float ``[out, n_groups]`` tensors."""
    check_weight(w)
    lo, hi = _group_reduce(w.float(), scheme)
    return qparams_from_range(lo, hi, scheme)


def search_qparams(
    w: torch.Tensor,
    scheme: QuantScheme,
    col_weight: torch.Tensor | None = None,
    *,
    steps: int = 20,
    max_shrink: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero of each (row, group) chosen by a clip search: the min-max range shrunk by
    each factor in ``1, ..., 1 - max_shrink`` and kept where the group's rounding error
    ``sum_j col_weight[j] (w - w_hat)^2`` is least (``col_weight`` = ``diag H`` weighs each input
    column by how much its activations carry; ``None``: plain MSE).

    Clipping a few outliers buys finer steps for every other weight; min-max is one candidate
    (factor 1), so the error is never above min-max's.
    """
    check_weight(w)
    w = w.float()
    cw = torch.ones(w.shape[1]) if col_weight is None else col_weight.float().clamp(min=0)
    lo, hi = _group_reduce(w, scheme)
    best_s, best_z = qparams_from_range(lo, hi, scheme)
    best_err = None
    gidx = group_index(w.shape[1], scheme).to(w.device)
    for k in range(steps + 1):
        f = 1.0 - max_shrink * k / steps
        s, z = qparams_from_range(lo * f, hi * f, scheme)
        err_cols = (w - dequantize(quantize(w, s, z, scheme), s, z, scheme)) ** 2 * cw
        err = torch.zeros_like(s).index_add_(1, gidx, err_cols)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


def _per_column(t: torch.Tensor, w: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    # scale/zero may come per group [out, G] or already per column [out, in] / [out, 1]
    if t.shape[-1] == w.shape[-1] or t.shape[-1] == 1:
        return t
    return expand(t, w.shape[-1], scheme)


def quantize(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: QuantScheme
) -> torch.Tensor:
    """Integer codes ``0 .. 2^bits-1`` (uint8) of ``w`` on the grid (round half to even)."""
    s = _per_column(scale, w, scheme)
    z = _per_column(zero, w, scheme)
    q = torch.round(w.float() / s + z).clamp(0, scheme.qmax)
    return q.to(torch.uint8)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: QuantScheme
) -> torch.Tensor:
    """Float weight ``(q - zero) * scale``."""
    s = _per_column(scale, q, scheme)
    z = _per_column(zero, q, scheme)
    return (q.float() - z) * s


def fake_quantize(w: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Round ``w`` onto its own min-max grid and back: the round-to-nearest (RTN) weight."""
    scale, zero = qparams(w, scheme)
    return dequantize(quantize(w, scale, zero, scheme), scale, zero, scheme).to(w.dtype)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (torchao's ``compute_error``)."""
    ref, approx = ref.double(), approx.double()
    noise = (ref - approx).norm()
    if noise == 0:
        return math.inf
    return float(20 * torch.log10(ref.norm() / noise))
