"""Gradual pruning schedules: sparsity that rises during training instead of all at once.

Zhu & Gupta 2017 ("To prune, or not to prune"): s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(n·Δt))³
— prune fast while many redundant weights remain, slowly near the end, so training recovers
between steps. ``linear`` and ``one_shot`` are given for comparison. The distillation trainer
calls ``schedule.step(model, step)`` every step; masks are recomputed every ``every`` steps by
magnitude (pruned weights are zero and masked, so the mask only grows) and held in between by
the gradient hook of ``slimline.prune.masks`` plus ``keep_masks`` on the optimizer.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from torch import nn

from slimline.core import config_error
from slimline.errors import ConfigError

Kind = Literal["one_shot", "linear", "cubic"]


def sparsity_at(
    step: int,
    *,
    final: float,
    start: int = 0,
    end: int = 1000,
    initial: float = 0.0,
    kind: Kind = "cubic",
) -> float:
    """Target sparsity at ``step``: ``initial`` before ``start``, ``final`` from ``end`` on."""
    if step < start:
        return initial if kind != "one_shot" else 0.0
    if kind == "one_shot" or step >= end:
        return final
    frac = (step - start) / (end - start)
    if kind == "linear":
        return initial + (final - initial) * frac
    if kind == "cubic":
        return final + (initial - final) * (1.0 - frac) ** 3
    raise ConfigError(f"unknown schedule {kind!r}", "use one_shot, linear or cubic")


class PruningSchedule(BaseModel):
    """When and how much to prune during training (a small component, not a trainer)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    final_sparsity: float = 0.5
    initial_sparsity: float = 0.0
    start_step: int = 0
    end_step: int = 1000
    every: int = 100  # recompute masks every N steps (Zhu & Gupta's Δt)
    kind: Kind = "cubic"
    scope: Literal["layer", "global"] = "layer"
    targets: list[str] = []
    ignore: list[str] = ["lm_head"]

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise config_error("pruning schedule", e) from e

    @field_validator("final_sparsity", "initial_sparsity")
    @classmethod
    def _sp(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {v}")
        return v

    @model_validator(mode="after")
    def _steps(self) -> PruningSchedule:
        if self.end_step < self.start_step or self.every < 1 or self.start_step < 0:
            raise ValueError("need 0 <= start_step <= end_step and every >= 1")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError("initial_sparsity must not exceed final_sparsity")
        return self

    def sparsity_at(self, step: int) -> float:
        return sparsity_at(
            step,
            final=self.final_sparsity,
            start=self.start_step,
            end=self.end_step,
            initial=self.initial_sparsity,
            kind=self.kind,
        )

    def due(self, step: int) -> bool:
        """Masks change at start, every ``every`` steps after, and at ``end`` (final sparsity)."""
        if step < self.start_step:
            return False
        if self.kind == "one_shot":
            return step == self.start_step
        return step == self.end_step or (
            step < self.end_step and (step - self.start_step) % self.every == 0
        )

    @torch.no_grad()
    def step(self, model: nn.Module, step: int) -> dict[str, Any] | None:
        """Prune ``model`` to this step's sparsity if a mask update is due; else None."""
        if not self.due(step):
            return None
        from slimline.prune.oneshot import Magnitude, apply_magnitude

        target = self.sparsity_at(step)
        if target <= 0.0:
            return None
        cfg = Magnitude(sparsity=target, scope=self.scope, targets=self.targets, ignore=self.ignore)
        from slimline.core import Context

        rec = apply_magnitude(model, cfg, Context())
        return {"step": step, "target": target, "sparsity": rec["sparsity"]}
