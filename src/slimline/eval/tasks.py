"""Evaluation tasks: each one a frozen pydantic config plus a function, registered by name.

``@register_task(Cloze)`` binds ``Cloze`` (``name = "cloze"``) to a function
``fn(cfg, ctx) -> TaskResult``. A task reads the model (and the reference, when there is one)
only through ``LogitsEngine``s, and returns the model's metrics, the reference's metrics on the
same items (so gates can be relative), and the reason when it had to skip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from slimline.errors import ConfigError
from slimline.eval.engine import LogitsEngine


class TaskConfig(BaseModel):
    """Base of every task config: frozen, no unknown fields, ``name`` says which task it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: ClassVar[str] = ""
    judges: ClassVar[tuple[str, ...]] = ("causal-lm",)  # model kinds it applies to


@dataclass
class TaskResult:
    """What one task measured. ``reference`` holds the reference's values of the same metrics."""

    metrics: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


@dataclass
class TaskContext:
    """The model under test, its reference, and a memo shared by the tasks of one suite run."""

    model: LogitsEngine | None
    reference: LogitsEngine | None = None
    loaded: Any = None  # the LoadedModel behind ``model`` (encoder tasks need embeddings)
    loaded_reference: Any = None
    figures_dir: Path | None = None
    limit: int | None = None  # cap on items per task (smoke runs)
    memo: dict[Hashable, Any] = field(default_factory=dict)

    def cached(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per key: tasks that share items (cloze -> calibration) reuse them."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def engines(self) -> list[tuple[str, LogitsEngine]]:
        """``("model", engine)`` and, with a reference, ``("reference", engine)``."""
        out = [("model", self.model)]
        if self.reference is not None:
            out.append(("reference", self.reference))
        return out  # type: ignore[return-value]

    def n(self, n: int) -> int:
        return n if self.limit is None else max(1, min(n, self.limit))


TaskFn = Callable[[Any, TaskContext], TaskResult]
TASKS: dict[str, tuple[type[TaskConfig], TaskFn]] = {}


def register_task(config_cls: type[TaskConfig]) -> Callable[[TaskFn], TaskFn]:
    """Bind a task config class to its function under ``config_cls.name``."""

    def deco(fn: TaskFn) -> TaskFn:
        if not config_cls.name:
            raise ValueError(f"{config_cls.__name__} has no name")
        TASKS[config_cls.name] = (config_cls, fn)
        return fn

    return deco


def make_task(spec: str | dict[str, Any] | TaskConfig) -> TaskConfig:
    """A task config from a name, ``{"name": ..., **fields}`` or a config (returned as is)."""
    if isinstance(spec, TaskConfig):
        return spec
    if isinstance(spec, str):
        name, fields = spec, {}
    else:
        fields = dict(spec)
        name = fields.pop("name", "")
    if name not in TASKS:
        raise ConfigError(
            f"unknown evaluation task {name!r}", f"use one of: {', '.join(sorted(TASKS))}"
        )
    try:
        return TASKS[name][0](**fields)
    except Exception as e:
        raise ConfigError(f"bad settings for task {name!r}: {e}", "check the field names") from e


def run_task(cfg: TaskConfig, ctx: TaskContext) -> TaskResult:
    """Run one task, or skip it (with the reason) when the model is not of a kind it judges."""
    kind = getattr(ctx.loaded, "kind", "causal-lm")
    if kind not in cfg.judges:
        return TaskResult(skipped=[f"{cfg.name}: judges {'/'.join(cfg.judges)} models, not {kind}"])
    return TASKS[cfg.name][1](cfg, ctx)


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)); the error is 0 for one value."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n == 1:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)
