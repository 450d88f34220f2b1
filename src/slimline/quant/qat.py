"""Quantization-aware training: train through the rounding so the weights settle on the grid.

``enable_qat`` swaps selected ``nn.Linear`` layers for ``FakeQuantLinear``: the forward uses the
weight rounded onto the quantization grid (``slimline.quant.grid``), the backward passes the
gradient straight through the rounding (the straight-through estimator, Bengio et al. 2013), so
the optimizer keeps updating the full-precision "shadow" weight. With ``learn_scale=True`` the
per-group scales are parameters too, trained with LSQ's gradient (Esser et al. 2020,
arXiv:1902.08153), including its gradient scale 1/sqrt(numel * qmax).

The distillation trainer switches it on as a hook — ``enable_qat(model, scheme)`` before the
loop, ``convert_qat(model)`` after — and nothing else changes: the same ``Parameter`` objects
stay in the model, so an optimizer built before or after ``enable_qat`` trains them.
``convert_qat`` folds the result into weights that lie exactly on the grid (plain ``nn.Linear``
whose values ``(q - zero) * scale`` any weight packer reproduces bit for bit), or
``disable_qat`` returns to the float model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimline.core import require_selection, select_modules, set_submodule
from slimline.errors import ConfigError
from slimline.quant.grid import (
    QuantScheme,
    check_weight,
    expand,
    qparams,
)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """x forward; gradient multiplied by g backward (LSQ's step-size gradient scale)."""
    return (x - x * g).detach() + x * g


class FakeQuantLinear(nn.Module):
    """``nn.Linear`` whose forward sees its weight on the quantization grid (STE backward).

    Holds the original ``weight``/``bias`` Parameters (same objects). ``scale`` is a buffer
    recomputed from the weight's min-max every forward, or, with ``learn_scale``, a Parameter
    initialised from it and trained (LSQ). The zero point is fixed at initialisation.
    """

    def __init__(self, linear: nn.Linear, scheme: QuantScheme, learn_scale: bool = False):
        super().__init__()
        check_weight(linear.weight.detach(), "weight")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.scheme = scheme
        self.learn_scale = learn_scale
        self.weight = linear.weight
        self.bias = linear.bias
        scale, zero = qparams(linear.weight.detach(), scheme)
        self.register_buffer("zero", zero)
        if learn_scale:
            self.scale = nn.Parameter(scale.clone())
        else:
            self.register_buffer("scale", scale)

    def grid_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero) per group ``[out, n_groups]`` as used by the current forward."""
        if self.learn_scale:
            return self.scale.detach().abs().clamp(min=1e-10), self.zero
        return qparams(self.weight.detach(), self.scheme)

    def quantized_weight(self) -> torch.Tensor:
        """The weight the forward uses: on the grid, differentiable by STE (and LSQ)."""
        w = self.weight
        if self.learn_scale:
            g = 1.0 / (w.numel() * self.scheme.qmax) ** 0.5
            scale = _grad_scale(self.scale.abs().clamp(min=1e-10), g)
            zero = self.zero
        else:
            scale, zero = qparams(w.detach(), self.scheme)
            self.scale.copy_(scale)
        s = expand(scale, self.in_features, self.scheme)
        z = expand(zero, self.in_features, self.scheme)
        if self.learn_scale:
            q = torch.clamp(round_ste(w / s + z), 0, self.scheme.qmax)
            return (q - z) * s
        # plain STE: the gradient w.r.t. the rounded weight goes to the shadow weight unchanged
        q = torch.clamp(torch.round(w.detach() / s + z), 0, self.scheme.qmax)
        return w + ((q - z) * s - w).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.quantized_weight().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.scheme.label()}, learn_scale={self.learn_scale}"


def enable_qat(
    model: nn.Module,
    scheme: QuantScheme,
    targets: Iterable[str] | None = None,
    ignore: Iterable[str] | None = ("lm_head",),
    learn_scale: bool = False,
) -> list[str]:
    """Swap the selected Linears for ``FakeQuantLinear``; returns their names.

    With no ``targets``, every Linear inside the transformer blocks (the arch map's block list)
    is selected; ``lm_head`` is ignored by default (tied to the embedding in SmolLM2).
    """
    if any(isinstance(m, FakeQuantLinear) for m in model.modules()):
        raise ConfigError(
            "QAT is already enabled on this model", "call disable_qat or convert_qat first"
        )
    within = None
    if not targets:
        try:
            from slimline.models.arch import get_arch

            within = [get_arch(model).block_prefix(model)]
        except Exception:  # not a known family: every Linear
            within = None
    sel = select_modules(model, targets, ignore, within=within)
    sel = {n: m for n, m in sel.items() if isinstance(m, nn.Linear)}
    require_selection(sel, targets, "train with fake quantization")
    for name, lin in sel.items():
        set_submodule(model, name, FakeQuantLinear(lin, scheme, learn_scale))
    return list(sel)


def _fake_layers(model: nn.Module) -> dict[str, FakeQuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)}


def _as_linear(m: FakeQuantLinear, weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    lin = lin.to(device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if m.bias is not None:
            lin.bias.copy_(m.bias)
    return lin


def disable_qat(model: nn.Module) -> list[str]:
    """Back to plain ``nn.Linear`` with the trained full-precision weights; returns the names."""
    layers = _fake_layers(model)
    for name, m in layers.items():
        set_submodule(model, name, _as_linear(m, m.weight.detach()))
    return list(layers)


@torch.no_grad()
def convert_qat(model: nn.Module, pack: bool = False) -> dict[str, Any]:
    """Fold fake quantization into real grid weights.

    ``pack=False``: each layer becomes an ``nn.Linear`` whose weight equals ``(q - zero) * scale``
    exactly; ``pack=True``: a ``QuantLinear`` holding the packed codes (the artifact shrinks).
    Returns ``{"layers": n, "grids": {name: {scale, zero, codes, scheme}}}``.
    """
    from slimline.quant.grid import dequantize, quantize

    layers = _fake_layers(model)
    if not layers:
        raise ConfigError(
            "no QAT layers to convert", "call enable_qat(model, scheme) and train first"
        )
    grids: dict[str, dict[str, Any]] = {}
    for name, m in layers.items():
        scale, zero = m.grid_params()
        codes = quantize(m.weight.detach(), scale, zero, m.scheme)
        if pack:
            from slimline.quant.linear import QuantLinear

            new = QuantLinear.from_codes(codes, scale, zero, m.scheme, m.bias).to(m.weight.device)
        else:
            new = _as_linear(m, dequantize(codes, scale, zero, m.scheme).to(m.weight.dtype))
        set_submodule(model, name, new)
        grids[name] = {
            "scale": scale.clone(),
            "zero": zero.clone(),
            "codes": codes,
            "scheme": m.scheme,
        }
    return {"layers": len(layers), "grids": grids}


def qat_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable scales (LSQ) of all QAT layers: add them to the optimizer's parameters."""
    return [m.scale for m in _fake_layers(model).values() if m.learn_scale]
