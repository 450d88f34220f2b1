"""Sensitivity analysis: how much each layer suffers at each sparsity, and a non-uniform
allocation of sparsity that spends a global budget where it hurts least.

The sweep runs the calibration engine once: for every selected linear it accumulates the input
Hessian H = 2/n XᵀX and ||X_j||, then for each sparsity builds the magnitude or Wanda mask and
measures the layer's relative output error tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) exactly, without touching the
model. Two allocations:

- ``allocate(sweep, target)``: greedy on the sweep — raise the sparsity of the layer whose next
  step costs the least error per removed weight, until the parameter-weighted mean reaches the
  target.
- ``owl_allocation``: OWL (Yin et al. 2024) — blocks with more outlier activations×weights
  (Wanda scores above M× their mean) keep more weights: s_b = target - λ·(D_b - mean D)
  rescaled to ±λ, parameter-weighted mean preserved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from slimline.core import select_modules
from slimline.errors import ConfigError
from slimline.figures import save_png
from slimline.prune.importance import InputStats, magnitude, rank, wanda
from slimline.prune.sparsegpt import HessianAccumulator, output_error

DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class Sweep:
    """errors[layer][i] = relative output error of ``layer`` at ``sparsities[i]``."""

    sparsities: list[float]
    errors: dict[str, list[float]]
    params: dict[str, int]
    method: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "sparsities": self.sparsities,
            "errors": self.errors,
            "params": self.params,
        }

    def table(self) -> str:
        """A plain-text table: one row per layer, one column per sparsity."""
        width = max(len(n) for n in self.errors) if self.errors else 5
        head = f"{'layer':<{width}} " + " ".join(f"{s:>7.0%}" for s in self.sparsities)
        rows = [head, "-" * len(head)]
        for n, errs in self.errors.items():
            rows.append(f"{n:<{width}} " + " ".join(f"{e:>7.4f}" for e in errs))
        return "\n".join(rows)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """A PNG of error vs sparsity per layer (log scale), written atomically."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(path)
        fig, ax = plt.subplots(figsize=(8, 5))
        for n, errs in self.errors.items():
            ax.plot(self.sparsities, [max(e, 1e-8) for e in errs], marker=".", lw=1, label=n)
        ax.set_yscale("log")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("relative output error")
        ax.set_title(f"per-layer pruning sensitivity ({self.method})")
        if len(self.errors) <= 16:
            ax.legend(fontsize=6)
        fig.tight_layout()
        return save_png(fig, out, dpi=100)


def _selected(
    model: nn.Module, targets: list[str] | None, ignore: list[str] | None
) -> dict[str, nn.Module]:
    from slimline.models.arch import get_arch

    within = None if targets else [get_arch(model).block_path]
    sel = select_modules(model, targets, ignore, within=within)
    sel = {n: m for n, m in sel.items() if isinstance(m, nn.Linear)}
    if not sel:
        raise ConfigError(f"the patterns {targets} match no linear layer", "check targets/ignore")
    return sel


@torch.no_grad()
def sensitivity_sweep(
    model: Any,
    calib_ids: torch.Tensor,
    *,
    sparsities: tuple[float, ...] | list[float] = DEFAULT_SPARSITIES,
    method: Literal["magnitude", "wanda"] = "wanda",
    targets: list[str] | None = None,
    ignore: list[str] | None = ("lm_head",),  # type: ignore[assignment]
    batch_size: int = 4,
) -> Sweep:
    """Relative output error of every selected layer at every sparsity (the model is unchanged)."""
    from slimline.calib import run_blocks

    model = model.model if not isinstance(model, nn.Module) else model
    sps = [float(s) for s in sparsities]
    for s in sps:
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"sweep sparsity {s} outside [0, 1)", "use fractions like 0.5")
    if method not in ("magnitude", "wanda"):
        raise ConfigError(f"unknown sweep method {method!r}", "use magnitude or wanda")
    sel = _selected(model, list(targets or []), list(ignore or []))
    errors: dict[str, list[float]] = {}

    def on_block(step: Any) -> None:
        mine = {n: m for n, m in sel.items() if n.startswith(step.name + ".")}
        if not mine:
            return
        hs = {n: HessianAccumulator(m.weight.shape[1]) for n, m in mine.items()}
        st = {n: InputStats() for n in mine}

        def grab(n: str, _m: nn.Module, x: torch.Tensor, _y: Any) -> None:
            hs[n].add(x)
            st[n].add(x)

        with step.capture(mine, grab):
            step.outputs = step.forward()
        for n, m in mine.items():
            W = m.weight.detach().float().cpu()
            H = hs[n].get()
            score = magnitude(W) if method == "magnitude" else wanda(W, st[n].l2)
            scope = "layer" if method == "magnitude" else "row"
            errs = []
            for s in sps:
                mask = rank({n: score}, sparsity=s, scope=scope)[n]
                errs.append(output_error(W, W * mask, H))
            errors[n] = errs

    run_blocks(model, calib_ids, on_block, batch_size=batch_size, desc="sensitivity")
    params = {n: m.weight.numel() for n, m in sel.items()}
    return Sweep(sps, {n: errors[n] for n in sel if n in errors}, params, method)


def allocate(sweep: Sweep, target: float, *, max_sparsity: float | None = None) -> dict[str, float]:
    """Per-layer sparsities from the sweep grid reaching ``target`` (parameter-weighted) with the
    least summed error: greedy by error added per weight removed."""
    if not 0.0 < target < 1.0:
        raise ConfigError(f"target sparsity must be in (0, 1), got {target}", "e.g. 0.5")
    grid = [0.0, *sweep.sparsities]
    cap = max_sparsity if max_sparsity is not None else grid[-1]
    if target > cap:
        raise ConfigError(
            f"target {target} exceeds the largest swept sparsity {cap}", "sweep higher"
        )
    level = {n: 0 for n in sweep.errors}
    total = sum(sweep.params[n] for n in sweep.errors)

    def err(n: str, i: int) -> float:
        return 0.0 if i == 0 else sweep.errors[n][i - 1]

    def mean_sp() -> float:
        return sum(grid[level[n]] * sweep.params[n] for n in level) / total

    while mean_sp() < target - 1e-9:
        best, best_cost = None, float("inf")
        for n, i in level.items():
            if i + 1 >= len(grid) or grid[i + 1] > cap:
                continue
            removed = (grid[i + 1] - grid[i]) * sweep.params[n]
            cost = (err(n, i + 1) - err(n, i)) / removed
            if cost < best_cost:
                best, best_cost = n, cost
        if best is None:
            break
        level[best] += 1
    return {n: grid[i] for n, i in level.items()}


@torch.no_grad()
def owl_allocation(
    model: Any,
    calib_ids: torch.Tensor,
    target: float,
    *,
    lam: float = 0.08,
    m: float = 5.0,
    targets: list[str] | None = None,
    ignore: list[str] | None = ("lm_head",),  # type: ignore[assignment]
    batch_size: int = 4,
) -> dict[str, float]:
    """OWL: outlier-weighted per-block sparsity around ``target`` (same for a block's layers)."""
    from slimline.calib import run_blocks

    if not 0.0 < target < 1.0 or not 0.0 <= lam < min(target, 1 - target):
        raise ConfigError(
            f"OWL needs 0 < target < 1 and 0 <= lam < min(target, 1-target), got {target}, {lam}",
            "e.g. target=0.5, lam=0.08",
        )
    model = model.model if not isinstance(model, nn.Module) else model
    sel = _selected(model, list(targets or []), list(ignore or []))
    ratio: dict[str, float] = {}
    block_of: dict[str, str] = {}

    def on_block(step: Any) -> None:
        mine = {n: mm for n, mm in sel.items() if n.startswith(step.name + ".")}
        if not mine:
            return
        st = {n: InputStats() for n in mine}
        with step.capture(mine, lambda n, _m, x, _y: st[n].add(x)):
            step.outputs = step.forward()
        outl = tot = 0
        for n, mm in mine.items():
            sc = wanda(mm.weight.float().cpu(), st[n].l2)
            outl += int((sc > m * sc.mean()).sum())
            tot += sc.numel()
            block_of[n] = step.name
        ratio[step.name] = outl / tot

    run_blocks(model, calib_ids, on_block, batch_size=batch_size, desc="OWL")
    names = list(ratio)
    D = torch.tensor([ratio[b] for b in names])
    span = (D.max() - D.min()).clamp(min=1e-12)
    # Scale outlier ratios into [0, 2λ]: more outliers -> less sparsity.
    dev = (D - D.min()) / span * 2 * lam
    params_b = torch.tensor(
        [sum(sel[n].weight.numel() for n in sel if block_of.get(n) == b) for b in names],
        dtype=torch.float64,
    )
    sp = target - dev.double()
    sp = sp + (target - (sp * params_b).sum() / params_b.sum())  # keep the global budget exact
    per_block = {b: float(s) for b, s in zip(names, sp.clamp(0.0, 0.99), strict=True)}
    return {n: per_block[block_of[n]] for n in sel if n in block_of}
