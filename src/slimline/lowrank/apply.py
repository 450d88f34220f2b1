"""Low-rank techniques as recipe stages: ``lowrank.svd`` and ``lowrank.asvd`` (whitened)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from slimline.core import (
    Context,
    Need,
    TechniqueConfig,
    register_technique,
    require_selection,
    select_modules,
    set_submodule,
)
from slimline.errors import ConfigError, DataError
from slimline.lowrank.factor import factorize, rank_for_ratio
from slimline.models.arch import get_arch


class Svd(TechniqueConfig):
    """Factorise linear layers by truncated SVD of the weights alone."""

    kind: ClassVar[str] = "lowrank.svd"
    rank: int | None = Field(None, ge=1, description="fixed rank for every selected layer")
    rank_ratio: float | None = Field(
        0.5, gt=0, lt=1, description="fraction of each layer's parameters to keep"
    )
    targets: list[str] = []
    ignore: list[str] = ["lm_head"]

    @model_validator(mode="after")
    def _one_rank_rule(self) -> Svd:
        if (
            self.rank is not None
            and self.rank_ratio is not None
            and "rank_ratio" in self.model_fields_set
        ):
            raise ValueError("give either rank or rank_ratio, not both")
        return self


class Asvd(Svd):
    """Activation-aware SVD: whiten by the calibration inputs' Gram matrix, then truncate."""

    kind: ClassVar[str] = "lowrank.asvd"
    needs: ClassVar[frozenset[Need]] = frozenset({"calib"})
    damp: float = Field(0.01, ge=0, le=1)
    batch_size: int = Field(8, ge=1)


def _rank(cfg: Svd, lin: nn.Linear) -> int:
    out_f, in_f = lin.weight.shape
    return cfg.rank if cfg.rank is not None else rank_for_ratio(out_f, in_f, cfg.rank_ratio or 0.5)


def _selected(model: nn.Module, cfg: Svd) -> dict[str, nn.Linear]:
    arch = get_arch(model)
    sel = select_modules(model, cfg.targets, cfg.ignore, within=[arch.block_path])
    sel = {n: m for n, m in sel.items() if isinstance(m, nn.Linear)}
    require_selection(sel, cfg.targets, "factorise")
    return sel  # type: ignore[return-value]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register_technique(Svd)
def apply_svd(model: nn.Module, cfg: Svd, ctx: Context) -> dict[str, Any]:
    """Replace selected linears by rank-r SVD factors (no data needed)."""
    before = _params(model)
    layers = {}
    for name, lin in _selected(model, cfg).items():
        r = _rank(cfg, lin)
        set_submodule(model, name, factorize(lin, r))
        layers[name] = r
    return {"layers": layers, "params_before": before, "params_after": _params(model)}


@register_technique(Asvd)
def apply_asvd(model: nn.Module, cfg: Asvd, ctx: Context) -> dict[str, Any]:
    """Whitened SVD on the calibration engine: each block's layers see the already-factorised
    earlier blocks' outputs, so errors do not compound unseen."""
    from slimline.calib import run_blocks

    if ctx.calib is None:
        raise DataError(
            "lowrank.asvd needs calibration data",
            "pass data= (token ids) or set calibration data in the recipe",
        )
    selected = _selected(model, cfg)
    before = _params(model)
    layers: dict[str, int] = {}

    def on_block(step):  # type: ignore[no-untyped-def]
        mine = {n: m for n, m in selected.items() if n.startswith(step.name + ".")}
        if not mine:
            return None
        grams = {
            n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64)
            for n, m in mine.items()
        }

        def acc(name: str, _m: nn.Module, x: torch.Tensor, _out: Any) -> None:
            x2 = x.reshape(-1, x.shape[-1]).double()
            if not torch.isfinite(x2).all():
                raise DataError(
                    f"non-finite activations reach {name}",
                    "check the calibration data and the model's weights",
                )
            grams[name] += x2.T @ x2

        with step.capture(mine, acc):
            step.run()
        for n, m in mine.items():
            r = _rank(cfg, m)
            set_submodule(model, n, factorize(m, r, h=grams[n], damp=cfg.damp))
            layers[n] = r
        return {"layers": len(mine)}

    run_blocks(
        model, ctx.calib, on_block, batch_size=cfg.batch_size, device=ctx.device, desc="ASVD"
    )
    if not layers:
        raise ConfigError(
            "no selected layer lies inside the model's blocks", "adjust targets/ignore"
        )
    return {"layers": layers, "params_before": before, "params_after": _params(model)}
