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

**Engine grids** (``grid="gguf-q4_0"`` ...): the quantizer solves directly on the grid a GGUF
block type stores, so the export writes our codes unchanged (bit-exact) instead of rounding a
second time. Each fixes bits, group 32 and the format's conventions (ggml-common.h):

* ``gguf-q8_0``: ``w = d * x``, ``x`` in ``-127..127`` (our code ``x + 128``, zero 128).
* ``gguf-q4_0``: ``w = d * (q - 8)``, ``q`` in ``0..15``; ``d`` may be negative (ggml's trick:
  ``d = max / -8`` with ``max`` the signed extreme, so the larger side gets the 16th level).
* ``gguf-q4_1``: ``w = d * q + m`` with a float minimum ``m`` (not an integer zero point):
  ``zero`` holds ``m`` on this grid.
* ``gguf-q5_0`` / ``gguf-q5_1``: the same with 5-bit codes (``q - 16``; ``d * q + m``). On
  widths that are not a multiple of 256 (SmolLM2's 576) llama.cpp's K-quant mixes store most
  tensors as Q5_0: these are the grids a "Q4_K_M" file of such a model is made of.
* ``gguf-q6_k``: ``w = d * sc_j * (q - 32)``, ``q`` in ``0..63``, groups of 16 with an int8
  ``sc_j`` each, one fp16 ``d`` per super-block of 256 (``d = max / -128``, ggml's
  make_qx_quants convention). The group scale is stored as the fp32 product ``d * sc_j`` —
  exact, since 11 + 8 significant bits fit in fp32 — and the export factors it back.
* ``gguf-q4_k`` / ``gguf-q5_k``: ``w = d * sc_j * q - dmin * m_j`` over groups of 32, 6-bit
  ``sc_j``/``m_j`` (0..63) and fp16 ``d``/``dmin`` per super-block of 256; the range of each
  group includes 0 from below (``m_j >= 0``), as ggml's. Stored as ``scale = d * sc_j`` and the
  float offset ``zero = -(dmin * m_j)``, both exact products.

Scales (and ``m``) are rounded to fp16 as the format stores them, before the codes are chosen.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimline.errors import ConfigError, DataError

Bits = Literal[2, 3, 4, 5, 6, 8]
SUPPORTED_BITS = (2, 3, 4, 8)  # for plain schemes; 5 and 6 bits only as GGUF grids
Grid = Literal[
    "gguf-q8_0",
    "gguf-q6_k",
    "gguf-q5_k",
    "gguf-q5_0",
    "gguf-q5_1",
    "gguf-q4_k",
    "gguf-q4_0",
    "gguf-q4_1",
]
# grid -> (bits, group_size, symmetric) the block type fixes
GRIDS: dict[str, tuple[int, int, bool]] = {
    "gguf-q8_0": (8, 32, True),
    "gguf-q6_k": (6, 16, True),
    "gguf-q5_k": (5, 32, False),
    "gguf-q4_k": (4, 32, False),
    "gguf-q5_0": (5, 32, True),
    "gguf-q5_1": (5, 32, False),
    "gguf-q4_0": (4, 32, True),
    "gguf-q4_1": (4, 32, False),
}
SUPER_BLOCK = {
    "gguf-q6_k": 256,
    "gguf-q5_k": 256,
    "gguf-q4_k": 256,
}  # K-quants: group scales share one fp16 super-scale per 256


class QuantScheme(BaseModel):
    """How a weight is quantized: width, grouping along the input dim, symmetric or not."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    bits: Bits = 4
    group_size: int | None = Field(default=128, gt=0)
    symmetric: bool = True
    grid: Grid | None = None

    @model_validator(mode="after")
    def _grid_fits(self) -> QuantScheme:
        if (
            self.grid is not None
            and (self.bits, self.group_size, self.symmetric) != GRIDS[self.grid]
        ):
            b, g, sym = GRIDS[self.grid]
            raise ConfigError(
                f"grid {self.grid} is {b}-bit, group {g}, {'symmetric' if sym else 'asymmetric'}; "
                f"got bits={self.bits}, group_size={self.group_size}, symmetric={self.symmetric}",
                f"use make_scheme(grid={self.grid!r}) or drop the conflicting options",
            )
        return self

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    @property
    def qmin(self) -> int:
        """Lowest code: 1 on gguf-q8_0 (ggml's int8 range is -127..127), else 0."""
        return 1 if self.grid == "gguf-q8_0" else 0

    @property
    def super_block(self) -> int | None:
        """Weights per K-quant super-block (their group scales share one fp16 scale)."""
        return SUPER_BLOCK.get(self.grid or "")

    @property
    def offset_form(self) -> bool:
        """``w = q * scale + zero`` with a float ``zero`` (gguf-q4_1/q5_1's minimum ``m``)."""
        return self.grid in ("gguf-q4_1", "gguf-q5_1", "gguf-q4_k", "gguf-q5_k")

    def group(self, in_features: int) -> int:
        """Effective group width for a layer with ``in_features`` columns (validated)."""
        if self.group_size is None:
            return in_features
        block = self.super_block or self.group_size
        if self.grid is not None and in_features % block:
            raise ConfigError(
                f"grid {self.grid} stores whole blocks of {block} weights; a layer "
                f"with {in_features} inputs does not fit",
                "ignore that layer (--ignore), or use a 32-weight grid (gguf-q8_0, gguf-q5_0, "
                "gguf-q4_0 ...)",
            )
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
        if self.grid is not None:
            return self.grid
        g = "ch" if self.group_size is None else f"g{self.group_size}"
        return f"w{self.bits}{g}{'' if self.symmetric else 'a'}"


def make_scheme(
    bits: int = 4, group_size: int | None = 128, symmetric: bool = True, grid: str | None = None
) -> QuantScheme:
    """A validated scheme, with slimline errors instead of pydantic ones for plain arguments.

    ``grid`` (``gguf-q4_0`` ...) fixes bits, group and symmetry itself: the others are ignored.
    """
    if grid is not None:
        if grid not in GRIDS:
            raise ConfigError(f"unknown grid {grid!r}", f"use one of: {', '.join(GRIDS)}")
        b, g, sym = GRIDS[grid]
        return QuantScheme(bits=b, group_size=g, symmetric=sym, grid=grid)  # type: ignore[arg-type]
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
    if w.device.type == "meta":  # streamed (slimline.models.lazy): checked when read from disk
        return
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
    if scheme.grid is not None:
        return _grid_qparams(lo.float(), hi.float(), scheme)
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


def _fp16(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` rounded to fp16 (as GGUF stores it), refused where it overflows."""
    h = t.half().float()
    if not torch.isfinite(h).all():
        raise DataError(
            f"a GGUF {what} of {float(t.abs().max()):.3g} overflows fp16",
            "these weights are too large for a GGUF block grid; quantize without --grid",
        )
    return h


def _grid_qparams(
    lo: torch.Tensor, hi: torch.Tensor, scheme: QuantScheme
) -> tuple[torch.Tensor, torch.Tensor]:
    # ggml-quants.c quantize_row_*_ref, with d (and m) rounded to fp16 before the codes are chosen
    if scheme.grid == "gguf-q8_0":
        amax = torch.maximum(-lo, hi).clamp(min=0)
        return _fp16(amax / 127, "scale"), torch.full_like(amax, 128.0)
    half = 2 ** (scheme.bits - 1)
    if scheme.super_block and not scheme.symmetric:  # q4_k / q5_k
        return _k_asym_qparams(lo, hi, scheme)
    if scheme.super_block:  # q6_k: group scale max/-32, then d = (largest one) / -128 per 256
        s = torch.where(-lo >= hi, lo, hi) / -half
        k = scheme.super_block // (scheme.group_size or 1)
        if s.shape[-1] % k:
            raise ConfigError(
                f"{scheme.grid} sets scales per super-block of {k} groups; got {s.shape[-1]}",
                "quantize whole rows (GPTQ: static_groups or actorder)",
            )
        sb = s.reshape(*s.shape[:-1], s.shape[-1] // k, k)
        smax = sb.gather(-1, sb.abs().argmax(-1, keepdim=True))
        d = _fp16(smax / -128, "super-scale")
        sc = torch.where(d == 0, 0.0, torch.round(sb / torch.where(d == 0, 1.0, d)))
        scale = (d * sc.clamp(-128, 127)).reshape(s.shape)  # exact: fp16 x int8 fits fp32
        return scale, torch.full_like(s, float(half))
    if scheme.symmetric:  # q4_0 / q5_0: the extreme keeps its sign, d = max / -8 (or -16)
        signed_max = torch.where(-lo >= hi, lo, hi)
        return _fp16(signed_max / -half, "scale"), torch.full_like(lo, float(half))
    # q4_1 / q5_1: w = d * q + m over [min, max] (0 need not be inside)
    m = _fp16(torch.minimum(lo, hi), "minimum")
    return _fp16((hi - m).clamp(min=0) / scheme.qmax, "scale"), m


def _k_asym_qparams(
    lo: torch.Tensor, hi: torch.Tensor, scheme: QuantScheme
) -> tuple[torch.Tensor, torch.Tensor]:
    # ggml-quants.c quantize_row_q4_K_ref's structure: per group a scale and a minimum <= 0, each
    # a 6-bit multiple of its super-block's fp16 d / dmin (the largest group's at 63)
    lo = torch.minimum(lo, torch.zeros_like(lo))
    s, mn = (torch.maximum(hi, lo) - lo) / scheme.qmax, -lo
    k = (scheme.super_block or 1) // (scheme.group_size or 1)
    if s.shape[-1] % k:
        raise ConfigError(
            f"{scheme.grid} sets scales per super-block of {k} groups; got {s.shape[-1]}",
            "quantize whole rows (GPTQ: static_groups or actorder)",
        )
    shape = s.shape
    sb, mb = s.reshape(*shape[:-1], -1, k), mn.reshape(*shape[:-1], -1, k)
    d = _fp16(sb.amax(-1, keepdim=True) / 63, "super-scale")
    dmin = _fp16(mb.amax(-1, keepdim=True) / 63, "super-minimum")
    sc = torch.where(d == 0, 0.0, torch.round(sb / torch.where(d == 0, 1.0, d))).clamp(0, 63)
    m = torch.where(dmin == 0, 0.0, torch.round(mb / torch.where(dmin == 0, 1.0, dmin)))
    return (d * sc).reshape(shape), -(dmin * m.clamp(0, 63)).reshape(shape)


def qparams(w: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero of ``w [out, in]``: two float ``[out, n_groups]`` tensors."""
    check_weight(w)
    lo, hi = _group_reduce(w.float(), scheme)
    return qparams_from_range(lo, hi, scheme)


# weights per slice of the clip search: each step holds ~8 weight-sized temporaries, so an
# 8192 x 2048 layer searched whole peaks ~0.5 GB above its weight; in 4M-element slices, 130 MB
SEARCH_CHUNK = 4 * 2**20


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
    rows = max(1, SEARCH_CHUNK // w.shape[1])
    if w.shape[0] > rows:  # rows are independent: a slice at a time bounds the temporaries
        parts = [search_qparams(w[r : r + rows], scheme, cw, steps=steps, max_shrink=max_shrink)
                 for r in range(0, w.shape[0], rows)]  # fmt: skip
        return torch.cat([s for s, _ in parts]), torch.cat([z for _, z in parts])
    lo, hi = _group_reduce(w, scheme)
    best_s, best_z = qparams_from_range(lo, hi, scheme)
    best_err = None
    gidx = group_index(w.shape[1], scheme).to(w.device)
    for k in range(steps + 1):
        f = 1.0 - max_shrink * k / steps
        s, z = qparams_from_range(lo * f, hi * f, scheme)
        sc, zc = s[:, gidx], z[:, gidx]  # per column once, not in quantize and again dequantize
        err_cols = (w - dequantize(quantize(w, sc, zc, scheme), sc, zc, scheme)) ** 2 * cw
        err = torch.zeros_like(s).index_add_(1, gidx, err_cols)
        if scheme.super_block:  # one choice per super-block: its groups share the fp16 scale
            k = scheme.super_block // (scheme.group_size or 1)
            err = err.reshape(err.shape[0], -1, k).sum(-1).repeat_interleave(k, 1)
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
    if scheme.grid is None:
        q = torch.round(w.float() / s + z)
    else:  # a zero fp16 scale (an all-zero group): every weight is the zero level
        safe = torch.where(s == 0, torch.ones_like(s), s)
        if scheme.offset_form:
            q = torch.where(s == 0, 0.0, torch.round((w.float() - z) / safe))
        else:
            q = torch.where(s == 0, z, torch.round(w.float() / safe + z))
    return q.clamp(scheme.qmin, scheme.qmax).to(torch.uint8)


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: QuantScheme
) -> torch.Tensor:
    """Float weight ``(q - zero) * scale`` (``q * scale + zero`` on gguf-q4_1: ggml's order of
    operations, so the values equal llama.cpp's dequantization bit for bit)."""
    s = _per_column(scale, q, scheme)
    z = _per_column(zero, q, scheme)
    if scheme.offset_form:
        return q.float() * s + z
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
