"""Search spaces over recipe stages: which stage parameters vary, which stages may be left out.

A space maps ``"<stage index>.<param>"`` to a list of choices or a range, and ``"<stage index>"``
to ``{present: [true, false]}`` when the stage itself is optional::

    {"0.bits": [4, 8], "0.group_size": [32, 64], "1.sparsity": {"low": 0.2, "high": 0.6},
     "1": {"present": [true, false]}}

Stages use the recipe form (``{kind: params}``) and parameters are checked against the
technique's own config class, so a space applies to any registered technique.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import TYPE_CHECKING, Any

from slimline.core import TechniqueConfig, get_technique, make_config
from slimline.errors import ConfigError
from slimline.metrics import higher_is_better

if TYPE_CHECKING:
    from slimline.recipe.schema import Recipe

DIRECTIONS = ("minimize", "maximize", "auto")
COST_PREFIXES = ("latency/", "memory/")  # measured on an engine, only near the front
ESTIMATED = ("flops/weights_per_token",)  # computed analytically before a trial runs


def stage_kind(stage: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if len(stage) != 1:
        raise ConfigError(
            f"a stage is one {{kind: params}} mapping, got keys {list(stage)}",
            "write stages as `- quant.gptq: {bits: 4}`",
        )
    kind, params = next(iter(stage.items()))
    return kind, dict(params or {})


def _split(key: str, n_stages: int) -> tuple[int, str | None]:
    idx, _, param = key.partition(".")
    if not idx.isdigit() or int(idx) >= n_stages or (key.count(".") and not param):
        raise ConfigError(
            f"search space key {key!r} does not name a stage parameter",
            f"use '<stage index 0..{n_stages - 1}>.<param>', or '<index>' with {{present: [true, false]}}",
        )
    return int(idx), param or None


def _values(key: str, spec: Any) -> list[Any]:
    """The values a spec can take that bound it: every choice, or a range's two ends."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"search space {key!r} has no choices", "list at least one value")
        return spec
    if isinstance(spec, dict) and "present" not in spec:
        lo, hi = spec.get("low"), spec.get("high")
        num = (int, float)
        if not (isinstance(lo, num) and isinstance(hi, num)) or isinstance(lo, bool):
            raise ConfigError(
                f"search range {key!r} needs numbers low and high", "write {low: 0.2, high: 0.6}"
            )
        if lo >= hi:
            raise ConfigError(
                f"search range {key!r} is empty: it needs low < high (got {lo} .. {hi})",
                "write {low: 0.2, high: 0.6}, or a list of choices",
            )
        extra = set(spec) - {"low", "high", "step", "log"}
        if extra:
            raise ConfigError(
                f"search range {key!r} has unknown keys {sorted(extra)}", "use low, high, step, log"
            )
        step = spec.get("step")
        if step is not None and (not isinstance(step, num) or step <= 0):
            raise ConfigError(f"search range {key!r}: step must be > 0", "e.g. step: 0.1")
        return [lo, hi]
    raise ConfigError(
        f"search space {key!r} must be a list of choices or a {{low, high}} range",
        "see slimline.search.space",
    )


def base_stages(recipe: Recipe) -> list[dict[str, Any]]:
    """The recipe's stages as written (``{kind: params it sets}``), defaults left out: a searched
    value then never clashes with a default the user never chose (``grid`` vs ``bits``)."""
    return [{s.kind: s.model_dump(mode="json", exclude_unset=True)} for s in recipe.stages]


def recipe_data(recipe: Recipe) -> dict[str, Any]:
    """``recipe`` as plain data with its stages as written, to store with a study."""
    return {**recipe.to_dict(), "stages": base_stages(recipe)}


def validate_space(stages: list[dict[str, Any]], space: dict[str, Any]) -> None:
    """Refuse a space that names a stage or parameter that does not exist, an empty range, or a
    value the technique's config refuses (checked one value at a time on the recipe's stage)."""
    if not space:
        raise ConfigError("the search space is empty", "vary at least one stage parameter")
    for key, spec in space.items():
        idx, param = _split(str(key), len(stages))
        kind, params = stage_kind(stages[idx])
        if param is None:
            if not (isinstance(spec, dict) and set(spec) == {"present"}):
                raise ConfigError(
                    f"search space {key!r} names stage {idx} ({kind}) itself",
                    "write {present: [true, false]} to make the stage optional",
                )
            vals = _values(f"{key}.present", spec["present"])
            if any(not isinstance(v, bool) for v in vals):
                raise ConfigError(f"{key}.present takes true/false, got {vals}", "[true, false]")
            continue
        fields = get_technique(kind).config.model_fields
        if param not in fields:
            raise ConfigError(
                f"search space {key!r}: stage {idx} ({kind}) has no parameter {param!r}",
                f"{kind} takes: {', '.join(sorted(fields))}",
            )
        for v in _values(str(key), spec):
            try:
                make_config(kind, {**params, param: v})
            except ConfigError as e:
                raise ConfigError(
                    f"search space {key!r}: {kind} refuses {param}={v!r}: {e.problem}", e.fix
                ) from e


def objective_metrics(recipe: Recipe) -> set[str]:
    """Metric names a search of ``recipe`` can optimise: what every trial measures, the analytic
    estimate, and the engine's cost metrics when ``eval.latency`` is set."""
    from slimline.recipe.schema import measured_metrics

    return measured_metrics(recipe) | set(ESTIMATED)


def _latency_on(recipe: Recipe) -> bool:
    return recipe.eval.latency is not None


def directions(objectives: dict[str, str]) -> list[str]:
    out = []
    for metric, d in objectives.items():
        if d not in DIRECTIONS:
            raise ConfigError(
                f"objective {metric}: direction {d!r}", "use minimize, maximize or auto"
            )
        out.append(d if d != "auto" else ("maximize" if higher_is_better(metric) else "minimize"))
    return out


def validate_search(recipe: Recipe) -> None:
    """The whole ``search:`` section against the recipe: space, objectives, targets."""
    s = recipe.search
    assert s is not None
    validate_space(base_stages(recipe), s.space)
    if not s.objectives:
        raise ConfigError(
            "a search needs at least one objective",
            "e.g. objectives: {ppl/python-docs: minimize, size/bytes: minimize}",
        )
    known = objective_metrics(recipe)
    for metric in s.objectives:
        if metric.startswith(COST_PREFIXES):
            if not _latency_on(recipe):
                raise ConfigError(
                    f"objective {metric} needs latency, and eval.latency is off",
                    "set eval.latency (engine, threads), or drop the objective",
                )
            higher_is_better(metric)  # an unnamed cost metric is refused here
            continue
        if metric not in known:
            raise ConfigError(
                f"objective {metric!r} is an unknown metric for this recipe",
                f"objectives can be: {', '.join(sorted(known))}"
                + (", latency/*, memory/*" if _latency_on(recipe) else ""),
            )
    directions(s.objectives)


def choose(trial: Any, key: str, spec: Any) -> Any:
    """One value of ``spec`` from an Optuna trial (``key`` is the parameter's name there)."""
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    if "present" in spec:
        return trial.suggest_categorical(key, spec["present"])
    if all(isinstance(spec[k], int) for k in ("low", "high")) and not isinstance(
        spec.get("step", 1), float
    ):
        return trial.suggest_int(
            key, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
        )
    return trial.suggest_float(
        key,
        float(spec["low"]),
        float(spec["high"]),
        step=spec.get("step"),
        log=spec.get("log", False),
    )


def apply_point(stages: list[dict[str, Any]], point: dict[str, Any]) -> list[TechniqueConfig]:
    """The concrete, validated stages of one point (``{space key: value}``): parameters
    substituted, absent stages removed. A combination a config refuses raises ``ConfigError``."""
    concrete = copy.deepcopy(stages)
    absent: set[int] = set()
    for key, value in point.items():
        idx, param = _split(str(key), len(stages))
        if param is None:
            if not value:
                absent.add(idx)
            continue
        kind, params = stage_kind(concrete[idx])
        params[param] = value
        concrete[idx] = {kind: params}
    kept = [s for i, s in enumerate(concrete) if i not in absent]
    return [make_config(*stage_kind(s)) for s in kept]


def suggest(
    trial: Any, stages: list[dict[str, Any]], space: dict[str, Any]
) -> list[TechniqueConfig]:
    """Sample one point of ``space`` with an Optuna trial and build its validated configs."""
    return apply_point(stages, {k: choose(trial, k, spec) for k, spec in space.items()})


def corner_points(space: dict[str, Any], limit: int = 4096) -> list[dict[str, Any]]:
    """Every combination of the space's choices and range ends (at most ``limit``): where the
    extremes of an analytic cost lie, to refuse targets no point can reach before any trial."""
    keys = list(space)
    vals = [
        _values(k, s["present"] if isinstance(s, dict) and "present" in s else s)
        for k, s in space.items()
    ]
    out = []
    for combo in itertools.product(*vals):
        out.append(dict(zip(keys, combo, strict=True)))
        if len(out) >= limit:
            break
    return out


def point_key(stages: list[TechniqueConfig]) -> str:
    """A canonical string of concrete stages: two trials with equal keys are the same recipe."""
    return json.dumps([{s.kind: s.to_dict()} for s in stages], sort_keys=True)
