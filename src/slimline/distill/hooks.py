"""In-loop compression: callbacks the distillation loop calls, not a second trainer.

A hook sees the student at the start of the run and after every optimizer step. Two ship here:
``GradualPruning`` (magnitude pruning on the cubic schedule of Zhu & Gupta 2017, masks re-applied
after every step so the optimizer cannot regrow pruned weights) and ``QuantAwareTraining``
(switches on the quantization area's fake-quant, ``slimline.quant.qat.enable_qat``).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from slimline.core import select_modules
from slimline.errors import ConfigError
from slimline.models import get_arch

__all__ = ["GradualPruning", "LoopHook", "QuantAwareTraining", "sparsity"]


class LoopHook:
    """Base of loop callbacks. Override what you need; the defaults do nothing on purpose."""

    name = "hook"

    def on_start(self, model: nn.Module, step: int, max_steps: int) -> None:
        """Called once before the first step (``step`` > 0 when a run resumes)."""

    def on_resume(self, model: nn.Module, step: int) -> None:
        """Called after a checkpoint's weights are loaded, before the first resumed step."""

    def after_step(self, model: nn.Module, step: int) -> dict[str, Any] | None:
        """Called after optimizer step ``step`` (1-based); returned fields go to the log."""
        return None

    def on_end(self, model: nn.Module) -> dict[str, Any] | None:
        """Called once after the last step; a returned record goes into the run's result."""
        return None


def sparsity(model: nn.Module, modules: dict[str, nn.Module] | None = None) -> float:
    """Fraction of exactly-zero weights over ``modules`` (default: every Linear)."""
    mods = modules or {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    zeros = sum(int((m.weight == 0).sum()) for m in mods.values())
    total = sum(m.weight.numel() for m in mods.values())
    return zeros / max(total, 1)


class GradualPruning(LoopHook):
    """Unstructured per-layer magnitude pruning, raised from 0 to ``target`` on the pruning
    area's cubic schedule (``slimline.prune.PruningSchedule``, Zhu & Gupta 2017), updated every
    ``every`` steps; between updates the masks are re-applied after each optimizer step. On
    resume the masks are rebuilt from the weights' zeros (pruned weights are exactly zero).
    """

    name = "prune"

    def __init__(
        self,
        target: float,
        *,
        every: int = 10,
        end: float = 0.75,
        targets: list[str] | None = None,
        ignore: list[str] | None = None,
    ):
        if not 0.0 < target < 1.0:
            raise ConfigError(f"pruning target must be in (0, 1) (got {target})", "e.g. 0.5")
        self.target, self.every, self.end_frac = target, every, end
        self.targets, self.ignore = targets or [], ignore if ignore is not None else ["lm_head"]
        self.masks: dict[str, torch.Tensor] = {}
        self.modules: dict[str, nn.Module] = {}
        self.plan: Any = None

    def schedule(self, step: int) -> float:
        return float(self.plan.sparsity_at(step))

    def on_start(self, model: nn.Module, step: int, max_steps: int) -> None:
        arch = get_arch(model)
        found = select_modules(model, self.targets, self.ignore, within=[arch.block_path])
        self.modules = {n: m for n, m in found.items() if isinstance(m, nn.Linear)}
        if not self.modules:
            raise ConfigError(
                f"pruning patterns {self.targets} select no Linear inside the blocks",
                "use names like 'mlp.down_proj' or 're:.*mlp.*'",
            )
        from slimline.prune.schedule import PruningSchedule

        self.plan = PruningSchedule(
            final_sparsity=self.target,
            start_step=0,
            end_step=max(1, round(self.end_frac * max_steps)),
            every=self.every,
            kind="cubic",
        )

    def on_resume(self, model: nn.Module, step: int) -> None:
        self.masks = {n: m.weight.detach() != 0 for n, m in self.modules.items()}

    @torch.no_grad()
    def _prune_to(self, level: float) -> None:
        for name, mod in self.modules.items():
            w = mod.weight
            k = int(level * w.numel())
            if k == 0:
                continue
            thresh = w.abs().flatten().kthvalue(k).values
            self.masks[name] = w.abs() > thresh
            w.mul_(self.masks[name])

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> dict[str, Any] | None:
        if self.plan.due(step):
            self._prune_to(self.schedule(step))
        for name, mask in self.masks.items():
            self.modules[name].weight.mul_(mask)
        return {"sparsity": round(sparsity(model, self.modules), 6)}


class QuantAwareTraining(LoopHook):
    """Fake quantization during distillation (``slimline.quant.qat``): the student learns around
    the rounding it will meet. At the end the weights are snapped onto the grid and the layers
    turned back into ``nn.Linear``, so a later ``quant.rtn`` stage with the same scheme is exact.

    ``bits``, ``group_size``, ``symmetric`` build the ``QuantScheme``; ``targets``, ``ignore``,
    ``learn_scale`` go to ``enable_qat``.
    """

    name = "qat"

    def __init__(self, **params: Any):
        self.params = dict(params)
        self.layers: list[str] = []

    def _qat(self) -> Any:
        try:
            return importlib.import_module("slimline.quant.qat")
        except ModuleNotFoundError as e:
            raise ConfigError(
                "quantization-aware training needs slimline.quant.qat, which this install lacks",
                "drop `qat` from the distill config, or install a slimline with the QAT module",
            ) from e

    def on_start(self, model: nn.Module, step: int, max_steps: int) -> None:
        from slimline.quant.grid import QuantScheme

        p = dict(self.params)
        scheme = QuantScheme(**{k: p.pop(k) for k in ("bits", "group_size", "symmetric") if k in p})
        self.layers = self._qat().enable_qat(model, scheme, **p)

    def on_end(self, model: nn.Module) -> dict[str, Any] | None:
        rec = self._qat().convert_qat(model)
        return {"qat_layers": rec.get("layers", len(self.layers))}
