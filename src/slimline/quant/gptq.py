"""GPTQ (``quant.gptq``, Frantar et al. 2022, arXiv:2210.17323): quantize one column at a time and
push each column's rounding error onto the columns not yet quantized, weighted by the inverse
Hessian of the layer's output error ``H = 2/n X^T X`` from calibration inputs.

``gptq_quantize`` is the pure math (weight + Hessian in, codes + grid out), split from the glue
that collects Hessians block by block on the calibration engine, so later blocks see the
quantization error of earlier ones. Details as in the reference implementation and
llm-compressor: dead inputs (zero Hessian diagonal) zeroed, dampening ``damp * mean(diag H)``,
activation order (largest ``diag H`` first), static groups (each group's grid fixed from the
original weight before any update, which is what makes activation order and groups compatible),
lazy block updates of ``block_size`` columns, upper Cholesky factor of ``H^-1``.
Each group's grid comes from a clip search weighted by ``diag H`` (``observer="mse"``, the
default: lower layer error than min-max on real SmolLM2 layers) or from the plain min-max range.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from slimline.calib import BlockStep
from slimline.calib.hessian import inverse_hessian_factor
from slimline.core import Context, Need, register_technique
from slimline.errors import ConfigError, DataError
from slimline.quant import grid
from slimline.quant.config import (
    Undo,
    WeightQuantConfig,
    calibrated_apply,
    check_finite_acts,
    layer_record,
)
from slimline.quant.grid import QuantScheme
from slimline.quant.linear import QuantLinear

_PER_ROW = {
    (b, sym): QuantScheme(bits=b, group_size=None, symmetric=sym)
    for b in grid.SUPPORTED_BITS
    for sym in (True, False)
}


class Gptq(WeightQuantConfig):
    kind: ClassVar[str] = "quant.gptq"
    needs: ClassVar[frozenset[Need]] = frozenset({"calib"})
    damp: float = Field(default=0.01, gt=0, le=1)
    actorder: bool = True
    static_groups: bool = True
    block_size: int = Field(default=128, gt=0)
    observer: Literal["mse", "minmax"] = "mse"
    batch_size: int = Field(default=8, gt=0)
    min_calib_tokens: int = Field(default=512, gt=0)


@torch.no_grad()
def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    scheme: QuantScheme,
    *,
    damp: float = 0.01,
    actorder: bool = True,
    static_groups: bool = True,
    block_size: int = 128,
    observer: str = "mse",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of weight ``w [out, in]`` under Hessian ``h [in, in]``: (codes, scale, zero).

    ``codes`` are ``[out, in]`` uint8 in the original column order, ``scale``/``zero`` the
    per-group ``[out, G]`` grid (``grid.dequantize`` gives the quantized weight).
    """
    grid.check_weight(w)
    if h.shape != (w.shape[1], w.shape[1]) or not torch.isfinite(h).all():
        raise DataError(
            f"Hessian of shape {tuple(h.shape)} (finite: {bool(torch.isfinite(h).all())}) does "
            f"not fit a weight with {w.shape[1]} inputs",
            "collect it from this layer's own finite calibration inputs",
        )
    if scheme.super_block and not (static_groups or actorder):
        raise ConfigError(
            f"{scheme.grid} shares one scale across 16 groups, so its grid must be fixed up front",
            "keep static_groups (the default) or actorder on",
        )
    h = h.detach().float()  # read only: the factor below is made from a permuted copy
    out_f, in_f = w.shape
    gs = scheme.group(in_f)
    hdiag = torch.diag(h).clone()
    dead = hdiag == 0
    hdiag[dead] = 1
    perm = torch.argsort(hdiag, descending=True) if actorder else torch.arange(in_f)
    w = w.detach().float().clone()
    w[:, dead] = 0

    def group_grid(cols: torch.Tensor, sch: QuantScheme, hd: torch.Tensor) -> tuple[Any, Any]:
        if observer == "mse":
            return grid.search_qparams(cols, sch, hd)
        return grid.qparams(cols, sch)

    if static_groups or actorder:  # fixed from the (dead-zeroed) original weight
        scale, zero = group_grid(w, scheme, hdiag)
    else:
        n_groups = scheme.n_groups(in_f)
        scale = torch.ones(out_f, n_groups)
        zero = torch.zeros(out_f, n_groups)
    gidx = grid.group_index(in_f, scheme)
    # the [in, in] factor after the clip search: a wide layer then never holds the factor
    # (268 MB at 8192 inputs) beside the search's temporaries
    hinv = inverse_hessian_factor(h, damp, perm=perm, dead=dead)

    w = w[:, perm]
    hdiag = hdiag[perm]
    gperm = gidx[perm]

    codes = torch.zeros(out_f, in_f, dtype=torch.uint8)
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = int(gperm[col])
            if not (static_groups or actorder) and col % gs == 0:
                # dynamic groups: this group's grid from the weights as updated so far
                w[:, col:i2] = w1[:, i:]
                span = slice(col, col + gs)
                per_row = scheme if scheme.grid else _PER_ROW[scheme.bits, scheme.symmetric]
                s, z = group_grid(w[:, span], per_row, hdiag[span])
                scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
            wc = w1[:, i]
            s_c, z_c = scale[:, g], zero[:, g]
            if scheme.grid is None:
                q = torch.round(wc / s_c + z_c).clamp(0, scheme.qmax)
                codes[:, col] = q.to(torch.uint8)
                deq = (q - z_c) * s_c
            else:  # engine grids: the format's own code range and zero convention
                qc = grid.quantize(wc[:, None], s_c[:, None], z_c[:, None], scheme)
                codes[:, col] = qc[:, 0]
                deq = grid.dequantize(qc, s_c[:, None], z_c[:, None], scheme)[:, 0]
            d = hinv1[i, i]
            e = (wc - deq) / d
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    inv = torch.argsort(perm)
    return codes[:, inv], scale, zero


class _HessianAccumulator:
    """Running ``2/n sum x x^T`` over every token a layer sees. Layers fed the very same input
    tensor (q/k/v, gate/up) share one (``calibrated_apply``): one GEMM and one ``[in, in]``
    fp64 sum instead of three."""

    shareable: ClassVar[bool] = True
    # From this width on H is summed in fp32, as the reference GPTQ and llm-compressor do, and
    # x^T x is formed a slice of rows at a time: an 8192-wide H is then 268 MB, not 537 MB in
    # fp64 plus a 268 MB product, and it lives through the whole block. Narrower layers keep
    # the fp64 sum (a few MB).
    WIDE: ClassVar[int] = 4096

    def __init__(self, name: str, n: int):
        self.name = name
        dtype = torch.float64 if n < self.WIDE else torch.float32
        self.h = torch.zeros(n, n, dtype=dtype)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        # fp32 GEMM (2x faster than fp64 on AVX2, relative error ~1e-7 for 4096 tokens), summed
        # across batches in fp64: at 128 x 512 calibration tokens this GEMM, not the rounding,
        # dominates GPTQ's wall time
        x = x.detach().reshape(-1, x.shape[-1]).float()
        check_finite_acts(self.name, x)
        m, n = x.shape
        self.h *= self.count / (self.count + m)
        self.count += m
        scale = 2.0 / self.count
        if self.h.dtype == torch.float64:
            self.h += (x.T @ x).double() * scale
            return
        for r in range(0, n, 512):  # wide: no [in, in] product beside the sum
            self.h[r : r + 512] += (x[:, r : r + 512].T @ x) * scale


def _rows(w: torch.Tensor) -> int:
    """Rows of ``w`` per ~4M-element slice."""
    return max(1, 2**22 // w.shape[1])


def layer_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """Output error ``tr((W - W_hat) H (W - W_hat)^T) / 2``: mean squared output error summed over
    outputs, the quantity GPTQ minimises (``H = 2/n X^T X``). In fp64, a slice of rows and of
    H's columns at a time: no fp64 copy of W or H (an 8192-wide H is 537 MB in fp64)."""
    total = torch.zeros((), dtype=torch.float64)
    n = _rows(w)
    for r in range(0, w.shape[0], n):
        d = w[r : r + n].double() - w_hat[r : r + n].double()
        for c in range(0, h.shape[1], 1024):
            total += ((d @ h[:, c : c + 1024].double()) * d[:, c : c + 1024]).sum()
    return float(total / 2)


def rtn_error(w: torch.Tensor, scheme: QuantScheme, h: torch.Tensor) -> float:
    """``layer_error`` of round-to-nearest on ``scheme`` (GPTQ's yardstick), a slice of rows at
    a time: rows round independently, so no whole-weight RTN copy is made."""
    n = _rows(w)
    return sum(
        layer_error(w[r : r + n], grid.fake_quantize(w[r : r + n].float(), scheme), h)
        for r in range(0, w.shape[0], n)
    )


@register_technique(Gptq)
def apply_gptq(model: nn.Module, cfg: Gptq, ctx: Context) -> dict[str, Any]:
    """GPTQ: Hessian-aware rounding with error feedback, block by block on calibration data."""
    scheme = cfg.scheme()

    def quantize_block(
        step: BlockStep,
        lins: dict[str, nn.Module],
        accs: dict[str, _HessianAccumulator],
        undo: Undo,
        layers: list[dict],
    ) -> dict[str, Any]:
        for name, lin in lins.items():
            h = accs.pop(name).h.float()  # fp32 for the solve (a wide H already is: no copy)
            codes, scale, zero = gptq_quantize(
                lin.weight,
                h,
                scheme,
                damp=cfg.damp,
                actorder=cfg.actorder,
                static_groups=cfg.static_groups,
                block_size=cfg.block_size,
                observer=cfg.observer,
            )
            q = QuantLinear.from_codes(codes, scale, zero, scheme, lin.bias)
            w = lin.weight.detach()
            layers.append(
                layer_record(
                    name,
                    lin.in_features,
                    scheme,
                    error=layer_error(w, q.dequantized_weight(), h),
                    rtn_error=rtn_error(w, scheme, h),
                )
            )
            undo.replace(name, q)
        return {"layers": len(lins)}

    return calibrated_apply(model, cfg, ctx, "gptq", _HessianAccumulator, quantize_block)
