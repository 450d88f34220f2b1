"""Activation-aware weight quantization (``quant.awq``, Lin et al. 2023, arXiv:2306.00978).

A few input channels carry much larger activations than the rest; their weights matter most.
AWQ multiplies weight column j by ``s_j = mean|x_j|^alpha`` before rounding (so salient columns
get a finer effective grid) and divides the input by ``s_j``, an exact identity before rounding.
``alpha`` is grid-searched per group of layers sharing one input, minimising the layers' output
error on the calibration data; ``alpha = 0`` is plain RTN, so the chosen scaling is never worse
than RTN on that data.

The output error of a scaled, rounded weight is computed from the input's second moment
``H = X^T X / n`` as ``tr(D H D^T)`` with ``D = W_hat - W``: exact over every calibration token,
at a cost independent of their number. The division by ``s`` is folded into the op that makes
the input (from the arch map: ``attn_norm`` -> q,k,v or fused qkv; ``mlp_norm`` -> gate,up or gate_up;
``up_proj`` rows -> down_proj; ``v_proj`` rows -> o_proj when the widths match, i.e. no GQA).
Where nothing can absorb it (GQA's o_proj, other families), the layer keeps ``input_scale`` and
divides its input at run time.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from slimline.calib import BlockStep
from slimline.core import Context, Need, register_technique
from slimline.models.arch import get_arch
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


class Awq(WeightQuantConfig):
    kind: ClassVar[str] = "quant.awq"
    needs: ClassVar[frozenset[Need]] = frozenset({"calib"})
    n_grid: int = Field(default=20, ge=2)
    batch_size: int = Field(default=8, gt=0)
    min_calib_tokens: int = Field(default=512, gt=0)


class _Stats:
    """Mean |x| per channel and the second moment ``X^T X / n`` of a layer's input."""

    def __init__(self, name: str, n: int):
        self.name = name
        self.abs_sum = torch.zeros(n, dtype=torch.float64)
        self.xtx = torch.zeros(n, n, dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        # per-batch sums in fp32 (2x faster GEMM than fp64), accumulated across batches in fp64
        x = x.detach().reshape(-1, x.shape[-1]).float()
        check_finite_acts(self.name, x)
        self.abs_sum += x.abs().sum(0, dtype=torch.float64)
        self.xtx += (x.T @ x).double()
        self.count += x.shape[0]

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.abs_sum / max(self.count, 1)).float()

    @property
    def h(self) -> torch.Tensor:
        return (self.xtx / max(self.count, 1)).float()


def output_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """Mean squared output error summed over outputs: ``tr(D H D^T)``, ``H = X^T X / n``."""
    d = (w_hat - w).float()
    return float(((d @ h.float()) * d).sum(dtype=torch.float64))


def scaled_fake_quant(w: torch.Tensor, s: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """The effective weight after scaling columns by ``s``, rounding, and dividing by ``s``."""
    return grid.fake_quantize(w * s, scheme) / s


@torch.no_grad()
def search_scale(
    weights: list[torch.Tensor],
    mean_abs: torch.Tensor,
    h: torch.Tensor,
    scheme: QuantScheme,
    n_grid: int = 20,
) -> tuple[torch.Tensor, float, float, float]:
    """Best per-input-channel scale for layers sharing one input: (s, alpha, error, rtn_error).

    ``s = mean_abs^alpha`` normalised to geometric mean 1, alpha in ``linspace(0, 1, n_grid)``;
    error is the summed ``output_error`` of all ``weights``.
    """
    x = mean_abs.float().clamp(min=1e-8)
    best: tuple[float, float, torch.Tensor] | None = None
    rtn_err = float("nan")
    for alpha in torch.linspace(0, 1, n_grid).tolist():
        s = x.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        err = sum(output_error(w, scaled_fake_quant(w.float(), s, scheme), h) for w in weights)
        if alpha == 0:
            rtn_err = err
        if best is None or err < best[0]:
            best = (err, alpha, s)
    assert best is not None
    return best[2], best[1], best[0], rtn_err


def _groups(block: nn.Module, model: nn.Module, lins: dict[str, nn.Linear], prefix: str) -> list:
    """[(fold target or None, [(full name, linear), ...])] — layers sharing one input.

    The fold target is ``(module, offset, rows)``: the op whose output channels feed the group
    (a pre-norm, with its weight offset — 1 for Gemma's ``x * (1 + w)``; v for o; up for down),
    and which of its rows (all, or the "up" half of a fused gate_up). A group whose input comes
    through something that cannot absorb the scale (a GQA-narrow v, a post-norm, an unknown
    family described by a hand-written table) keeps the scale as an input scale inside its
    QuantLinear instead.
    """
    try:
        arch = get_arch(model)
    except Exception:
        arch = None
    rel = {n[len(prefix) + 1 :]: n for n in lins}
    out: list[tuple[Any, list[tuple[str, nn.Linear]]]] = []
    used: set[str] = set()
    # fold only where the forward check of discovery proved each norm feeds its group
    if arch is not None and arch.source == "discovered":
        r = arch.roles
        attn_in = [r["qkv"]] if "qkv" in r else [r["q"], r["k"], r["v"]]
        off = arch.norm_offset
        plan: list[tuple[str | None, float, slice | None, list[str]]] = [
            (r["attn_norm"], off, None, attn_in),
            (r["mlp_norm"], off, None, list(r["mlp_in"])),
            # o reads attention-weighted v rows (a fused qkv keeps an input scale instead)
            (r.get("v"), 0.0, None, [r["o"]]),
        ]
        if arch.mlp_glu:  # down reads act(gate) * up: scaling up's rows passes through
            up_rows = arch.up_rows(model.config) if arch.mlp_fused else None
            plan.append((r["mlp_in"][-1], 0.0, up_rows, [r["mlp_out"]]))
        for prev_name, offset, rows, members in plan:
            present = [m for m in members if m in rel]
            if not present:
                continue
            target = None
            if prev_name is not None:
                prev = block.get_submodule(prev_name)
                target = (prev, offset, rows)
                width = (rows.stop - rows.start) if rows else getattr(prev, "out_features", None)
                first = block.get_submodule(present[0])
                if width is not None and width != first.in_features:
                    target = None  # GQA: v_proj is narrower than o_proj's input
            out.append((target, [(rel[m], lins[rel[m]]) for m in present]))
            used.update(rel[m] for m in present)
    for n, m in lins.items():
        if n not in used:
            out.append((None, [(n, m)]))
    return out


def _fold(target: tuple[nn.Module, float, slice | None], s: torch.Tensor, undo: Undo) -> None:
    """Divide the output channels of ``target`` (a norm's weight and bias, or Linear rows)."""
    prev, offset, rows = target
    for attr in ("weight", "bias"):
        t = getattr(prev, attr, None)
        if t is None:
            continue
        undo.save_tensor(t)
        if not isinstance(prev, nn.Linear) and attr == "weight" and offset:
            t.data.copy_((t.data.double() + offset).div(s.double()).sub(offset).to(t.dtype))
            continue
        part = t.data if rows is None else t.data[rows]
        if isinstance(prev, nn.Linear) and attr == "weight":
            part.div_(s[:, None].to(t.dtype))
        else:
            part.div_(s.to(t.dtype))


@register_technique(Awq)
def apply_awq(model: nn.Module, cfg: Awq, ctx: Context) -> dict[str, Any]:
    """AWQ: activation-aware per-channel scaling searched on calibration data, then rounding."""
    scheme = cfg.scheme()

    def quantize_block(
        step: BlockStep,
        lins: dict[str, nn.Module],
        stats: dict[str, _Stats],
        undo: Undo,
        layers: list[dict],
    ) -> dict[str, Any]:
        groups = _groups(step.block, model, lins, step.name)
        plans = []
        for prev, members in groups:
            st = stats[members[0][0]]
            ws = [m.weight.detach().float() for _, m in members]
            s, alpha, err, rtn_err = search_scale(ws, st.mean_abs, st.h, scheme, cfg.n_grid)
            plans.append((prev, members, s, alpha, err, rtn_err))
        # fold every scale first (a folded Linear may itself be a member of another group) ...
        for prev, members, s, *_ in plans:
            if prev is not None:
                _fold(prev, s, undo)
            for _, m in members:
                undo.save_tensor(m.weight)
                m.weight.data.mul_(s[None, :].to(m.weight.dtype))
        # ... then round every scaled weight
        for prev, members, s, alpha, err, rtn_err in plans:
            for name, m in members:
                q = QuantLinear.from_linear(m, scheme, input_scale=None if prev is not None else s)
                layers.append(
                    layer_record(
                        name,
                        m.in_features,
                        scheme,
                        alpha=round(alpha, 3),
                        folded=prev is not None,
                        group_error=err,
                        group_rtn_error=rtn_err,
                    )
                )
                undo.replace(name, q)
        return {"groups": len(plans)}

    return calibrated_apply(model, cfg, ctx, "awq", _Stats, quantize_block)
