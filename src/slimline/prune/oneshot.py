"""One-shot unstructured / N:M pruning techniques: ``prune.magnitude``, ``prune.wanda``,
``prune.sparsegpt``.

Thin glue over the pure math in ``importance``, ``masks`` and ``sparsegpt``: select layers with
``targets``/``ignore`` (a tied lm_head/embedding is protected by ignoring either name), run the
calibration engine block by block where data is needed, store each mask on its layer.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import field_validator, model_validator
from torch import nn

from slimline.core import (
    Context,
    Need,
    SizeEffect,
    TechniqueConfig,
    register_technique,
    select_modules,
)
from slimline.errors import ConfigError, DataError
from slimline.prune.importance import InputStats, magnitude, rank, wanda
from slimline.prune.masks import apply_mask, check_nm_width, check_sparsity, parse_pattern
from slimline.prune.sparsegpt import HessianAccumulator, output_error, sparsegpt_prune


class PruneConfig(TechniqueConfig):
    """Shared fields. Invalid values raise ``ConfigError`` (a slimline error) at construction."""

    sparsity: float = 0.5
    pattern: str | None = None  # "2:4", "4:8": overrides sparsity
    sparsity_per_layer: dict[str, float] | None = None  # non-uniform allocation (sensitivity)
    targets: list[str] = []  # empty = every Linear inside the blocks
    ignore: list[str] = ["lm_head"]
    # how the pruned layers are kept: dense with zeros (later stages see plain Linears), or as
    # SparseLinear (bitmask + non-zeros, optionally in `storage_bits`): a smaller artifact
    storage: Literal["dense", "sparse"] = "dense"
    storage_bits: Literal[4, 8] | None = None

    @field_validator("sparsity")
    @classmethod
    def _sp(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {v}")
        return v

    @field_validator("pattern")
    @classmethod
    def _pat(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            n, m = parse_pattern(v)
        except ConfigError as e:
            raise ValueError(e.problem) from None
        return f"{n}:{m}"

    @field_validator("sparsity_per_layer")
    @classmethod
    def _per(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k, s in (v or {}).items():
            if not 0.0 <= s < 1.0:
                raise ValueError(f"sparsity of {k} must be in [0, 1), got {s}")
        return v

    @model_validator(mode="after")
    def _one(self) -> PruneConfig:
        if self.pattern and self.sparsity_per_layer:
            raise ValueError("give either an N:M pattern or per-layer sparsities, not both")
        return self

    def size_effect(self) -> SizeEffect:
        """Zeros up to the largest sparsity it may give a layer (an N:M pattern's share)."""
        share = self.sparsity
        if self.pattern:
            n, m = parse_pattern(self.pattern)
            share = max(share, 1 - n / m)
        share = max([share, *(self.sparsity_per_layer or {}).values()])
        return SizeEffect(kept=1.0 - share)

    def layer_sparsity(self, name: str) -> float:
        if self.sparsity_per_layer and name in self.sparsity_per_layer:
            return self.sparsity_per_layer[name]
        return self.sparsity


class Magnitude(PruneConfig):
    """Prune the smallest |W| (no data)."""

    kind: ClassVar[str] = "prune.magnitude"
    scope: Literal["layer", "row", "global"] = "layer"


class Wanda(PruneConfig):
    """Prune the smallest |W| x ||X||, compared within each output row (Sun et al. 2023)."""

    kind: ClassVar[str] = "prune.wanda"
    needs: ClassVar[frozenset[Need]] = frozenset({"calib"})
    batch_size: int = 8


class SparseGpt(PruneConfig):
    """Hessian-based pruning with OBS weight reconstruction (Frantar & Alistarh 2023)."""

    kind: ClassVar[str] = "prune.sparsegpt"
    needs: ClassVar[frozenset[Need]] = frozenset({"calib"})
    blocksize: int = 128
    damp: float = 0.01
    batch_size: int = 8


# --- selection ---------------------------------------------------------------------------------


def _unwrap(model: Any) -> nn.Module:
    return model.model if not isinstance(model, nn.Module) and hasattr(model, "model") else model


def select_prunable(model: nn.Module, cfg: PruneConfig) -> dict[str, nn.Module]:
    """Linear (or embedding) layers chosen by ``cfg.targets``/``cfg.ignore``; validated widths."""
    within = None
    if not cfg.targets:
        try:
            from slimline.models.arch import get_arch

            within = [get_arch(model).block_path]
        except Exception:  # a bare module without an HF config: every Linear
            within = None
    sel = select_modules(model, cfg.targets, cfg.ignore, within=within)
    seen: set[int] = set()
    kept = {}
    for n, m in sel.items():  # one weight under two names (a tied head) is one layer
        if isinstance(m, nn.Linear | nn.Embedding) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            kept[n] = m
    sel = kept
    if not sel:
        raise ConfigError(
            f"the layer patterns targets={cfg.targets} ignore={cfg.ignore} match no layer to prune",
            "list module names with `slimline profile MODEL --modules`, or use `re:` regexes",
        )
    if cfg.pattern:
        _, m = parse_pattern(cfg.pattern)
        for n, mod in sel.items():
            check_nm_width(mod.weight.shape[1], m, n)
    for n in sel:
        check_sparsity(cfg.layer_sparsity(n))
    return sel


def _calib(cfg: PruneConfig, ctx: Context) -> torch.Tensor:
    """The calibration blocks the caller supplied (``needs``); none are ever loaded here."""
    if ctx.calib is not None:
        return ctx.calib
    raise DataError(
        f"{cfg.kind} needs calibration data and none was given",
        "pass data=calibration_blocks(tokenizer, ...), or run it as a recipe stage",
    )


def _summary(
    model: nn.Module,
    cfg: PruneConfig,
    sel: dict[str, nn.Module],
    layers: dict[str, dict],
    zeros_by_layer: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The stage's numbers; with ``storage: sparse`` the pruned layers become SparseLinear.
    ``zeros_by_layer``: counted while each block was in hand (a streamed model's finished
    blocks are back on disk, see slimline.calib.stream)."""
    zeros = sum(
        zeros_by_layer[n] if zeros_by_layer is not None else int((m.weight == 0).sum())
        for n, m in sel.items()
    )
    total = sum(m.weight.numel() for m in sel.values())
    out = {
        "sparsity": zeros / total,
        "params_pruned": zeros,
        "params_considered": total,
        "layers": layers,
    }
    if cfg.storage == "sparse":
        from slimline.prune.sparse import to_sparse

        out["storage"] = to_sparse(model, bits=cfg.storage_bits)
    return out


# --- techniques --------------------------------------------------------------------------------


@register_technique(Magnitude)
@torch.no_grad()
def apply_magnitude(model: nn.Module, cfg: Magnitude, ctx: Context) -> dict[str, Any]:
    """Magnitude pruning: drop the smallest weights, per layer, per row or globally."""
    model = _unwrap(model)
    sel = select_prunable(model, cfg)
    scores = {n: magnitude(m.weight) for n, m in sel.items()}
    if cfg.scope == "global" and not cfg.pattern:
        masks = rank(scores, sparsity=cfg.sparsity, scope="global")
    else:
        sp = {n: cfg.layer_sparsity(n) for n in sel}
        masks = rank(scores, sparsity=sp, pattern=cfg.pattern, scope=cfg.scope)
    layers = {}
    for n, m in sel.items():
        apply_mask(m, masks[n])
        layers[n] = {"sparsity": float(1 - masks[n].float().mean())}
    return _summary(model, cfg, sel, layers)


def _blockwise(
    model: nn.Module,
    cfg: Wanda | SparseGpt,
    ctx: Context,
    prune_layer: Any,
    desc: str,
    acc_factory: Any,
) -> dict[str, Any]:
    """Shared glue: per block, collect statistics of the selected linears, then prune them."""
    from slimline.calib import run_blocks
    from slimline.models.arch import get_arch

    sel = select_prunable(model, cfg)
    prefix = get_arch(model).block_path + "."
    outside = [n for n in sel if not n.startswith(prefix)]
    if outside:
        raise ConfigError(
            f"{cfg.kind} prunes layers inside the blocks; {outside[:3]} lie outside",
            "add them to `ignore`, or prune them with prune.magnitude",
        )
    ids = _calib(cfg, ctx)
    layers: dict[str, dict] = {}
    zeros: dict[str, int] = {}

    def on_block(step: Any) -> dict[str, Any]:
        mine = {n: m for n, m in sel.items() if n.startswith(step.name + ".")}
        if not mine:
            return {}
        accs = {n: acc_factory(m) for n, m in mine.items()}
        with step.capture(mine, lambda n, _m, x, _y: accs[n].add(x)):
            step.run()
        for n, m in mine.items():
            layers[n] = prune_layer(n, m, accs[n])
            zeros[n] = int((m.weight == 0).sum())
        return {"layers": len(mine)}

    run_blocks(model, ids, on_block, batch_size=cfg.batch_size, device=ctx.device, desc=desc)
    return _summary(model, cfg, sel, layers, zeros)


@register_technique(Wanda)
@torch.no_grad()
def apply_wanda(model: nn.Module, cfg: Wanda, ctx: Context) -> dict[str, Any]:
    """Wanda: prune by |W| x input-activation norm, per output row, block by block."""
    model = _unwrap(model)

    def prune_layer(name: str, mod: nn.Module, acc: InputStats) -> dict[str, Any]:
        score = wanda(mod.weight, acc.l2.to(mod.weight.device))
        sp = cfg.layer_sparsity(name)
        mask = rank({name: score}, sparsity=sp, pattern=cfg.pattern, scope="row")[name]
        apply_mask(mod, mask)
        return {"sparsity": float(1 - mask.float().mean())}

    return _blockwise(model, cfg, ctx, prune_layer, "Wanda", lambda _m: InputStats())


@register_technique(SparseGpt)
@torch.no_grad()
def apply_sparsegpt(model: nn.Module, cfg: SparseGpt, ctx: Context) -> dict[str, Any]:
    """SparseGPT: OBS pruning with weight reconstruction from each layer's input Hessian."""
    model = _unwrap(model)
    nm = parse_pattern(cfg.pattern) if cfg.pattern else None

    def prune_layer(name: str, mod: nn.Module, acc: HessianAccumulator) -> dict[str, Any]:
        H = acc.get()
        w = mod.weight.data
        new_w, mask = sparsegpt_prune(
            w.cpu(),
            H,
            sparsity=cfg.layer_sparsity(name),
            nm=nm,
            blocksize=cfg.blocksize,
            damp=cfg.damp,
        )
        err = output_error(w.cpu(), new_w, H)
        w.copy_(new_w.to(w.device))
        apply_mask(mod, mask)
        return {"sparsity": float(1 - mask.float().mean()), "rel_output_error": err}

    return _blockwise(
        model,
        cfg,
        ctx,
        prune_layer,
        "SparseGPT",
        lambda m: HessianAccumulator(m.weight.shape[1]),
    )
