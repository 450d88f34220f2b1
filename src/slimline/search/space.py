"""Search spaces over recipe stages: which stage parameters vary, and how.

A space maps ``"<stage index>.<param>"`` to a list of choices or a range::

    {"0.bits": [4, 8], "0.group_size": [64, 128], "1.sparsity": {"low": 0.2, "high": 0.6}}

Stages use the recipe form (``{kind: params}``), so a space applies to any technique,
including ones registered after this file was written.
"""

from __future__ import annotations

import copy
from typing import Any

from slimline.core import TechniqueConfig, make_config
from slimline.errors import ConfigError


def stage_kind(stage: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if len(stage) != 1:
        raise ConfigError(
            f"a stage is one {{kind: params}} mapping, got keys {list(stage)}",
            "write stages as `- quant.gptq: {bits: 4}`",
        )
    kind, params = next(iter(stage.items()))
    return kind, dict(params or {})


def validate_space(stages: list[dict[str, Any]], space: dict[str, Any]) -> None:
    for key, spec in space.items():
        idx, _, param = key.partition(".")
        if not idx.isdigit() or not param or int(idx) >= len(stages):
            raise ConfigError(
                f"search space key {key!r} does not name a stage parameter",
                f"use '<stage index 0..{len(stages) - 1}>.<param>'",
            )
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"search space {key!r} has no choices", "list at least one value")
        elif isinstance(spec, dict):
            if not {"low", "high"} <= set(spec) or spec["low"] >= spec["high"]:
                raise ConfigError(
                    f"search range {key!r} needs low < high", "write {low: 0.2, high: 0.6}"
                )
        else:
            raise ConfigError(
                f"search space {key!r} must be a list of choices or a {{low, high}} range",
                "see slimline.search.space",
            )


def suggest(
    trial: Any, stages: list[dict[str, Any]], space: dict[str, Any]
) -> list[TechniqueConfig]:
    """Sample one point of ``space`` with an Optuna trial and build validated configs."""
    concrete = copy.deepcopy(stages)
    for key, spec in space.items():
        idx, _, param = key.partition(".")
        kind, params = stage_kind(concrete[int(idx)])
        if isinstance(spec, list):
            value = trial.suggest_categorical(key, spec)
        elif all(isinstance(spec[k], int) for k in ("low", "high")) and not spec.get("float"):
            value = trial.suggest_int(
                key, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
            )
        else:
            value = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=spec.get("log", False)
            )
        params[param] = value
        concrete[int(idx)] = {kind: params}
    return [make_config(*stage_kind(s)) for s in concrete]
