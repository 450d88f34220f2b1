"""Multi-objective search over recipe parameters (Optuna), the Pareto front, and the best
point that meets the deployment targets.

Each trial applies the sampled stages to a fresh copy of the model and measures it with a
user-given ``measure(model) -> metrics`` (default: the recipe runner's measurements). Trials can
run on many workers: give every worker the same ``storage`` URL (``sqlite:///search.db`` on a
shared disk, or a database server) and study name; Optuna coordinates them.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from slimline.core import Context, apply_technique
from slimline.errors import ConfigError, SlimlineError
from slimline.figures import save_png
from slimline.metrics import higher_is_better
from slimline.search.space import suggest, validate_space

log = logging.getLogger("slimline")

Measure = Callable[[nn.Module], dict[str, float]]
Feasible = Callable[[dict[str, float]], bool]


@dataclass
class TrialResult:
    number: int
    params: dict[str, Any]
    metrics: dict[str, float]
    feasible: bool


@dataclass
class SearchResult:
    objectives: dict[str, str]
    trials: list[TrialResult]
    front: list[TrialResult]
    best: TrialResult | None
    study: Any = field(repr=False, default=None)

    def table(self) -> list[dict[str, Any]]:
        on_front = {t.number for t in self.front}
        return [
            {
                "trial": t.number,
                **t.params,
                **t.metrics,
                "pareto": t.number in on_front,
                "meets_targets": t.feasible,
            }
            for t in self.trials
        ]


def _directions(objectives: dict[str, str]) -> list[str]:
    out = []
    for metric, d in objectives.items():
        if d not in ("minimize", "maximize", "auto"):
            raise ConfigError(
                f"objective {metric}: direction {d!r}", "use minimize, maximize or auto"
            )
        out.append(d if d != "auto" else ("maximize" if higher_is_better(metric) else "minimize"))
    return out


def _dominates(a: list[float], b: list[float], dirs: list[str]) -> bool:
    signs = [1 if d == "minimize" else -1 for d in dirs]
    at = [s * v for s, v in zip(signs, a, strict=True)]
    bt = [s * v for s, v in zip(signs, b, strict=True)]
    return all(x <= y for x, y in zip(at, bt, strict=True)) and any(
        x < y for x, y in zip(at, bt, strict=True)
    )


def pareto_front(trials: list[TrialResult], objectives: dict[str, str]) -> list[TrialResult]:
    dirs = _directions(objectives)
    vals = [[t.metrics[m] for m in objectives] for t in trials]
    return [
        t
        for t, v in zip(trials, vals, strict=True)
        if not any(_dominates(o, v, dirs) for o in vals if o is not v)
    ]


def search(
    model: nn.Module,
    stages: list[dict[str, Any]],
    space: dict[str, Any],
    objectives: dict[str, str],
    measure: Measure,
    *,
    n_trials: int = 20,
    ctx: Context | None = None,
    feasible: Feasible | None = None,
    storage: str | None = None,
    study_name: str = "slimline-search",
    seed: int = 0,
) -> SearchResult:
    """Explore ``space`` and return every trial, the Pareto front and the best feasible point.

    ``best`` is the front member that meets ``feasible`` (the targets) and is best on the first
    objective; ``None`` when no trial meets the targets — the caller should say so, not guess.
    """
    import optuna

    if not objectives:
        raise ConfigError(
            "a search needs at least one objective",
            "e.g. {'ppl/python-docs': 'minimize', 'size/bytes': 'minimize'}",
        )
    validate_space(stages, space)
    dirs = _directions(objectives)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (
        optuna.samplers.NSGAIISampler(seed=seed)
        if len(dirs) > 1
        else optuna.samplers.TPESampler(seed=seed)
    )
    study = optuna.create_study(
        directions=dirs,
        sampler=sampler,
        storage=storage,
        study_name=study_name,
        load_if_exists=storage is not None,
    )

    def objective(trial: Any) -> list[float]:
        configs = suggest(trial, stages, space)
        candidate = copy.deepcopy(model)
        try:
            for cfg in configs:
                apply_technique(candidate, cfg, ctx or Context())
            metrics = measure(candidate)
        except SlimlineError as e:  # an invalid combination: tell Optuna, keep searching
            trial.set_user_attr("error", e.problem)
            raise optuna.TrialPruned(e.problem) from e
        missing = [m for m in objectives if m not in metrics or not math.isfinite(metrics[m])]
        if missing:
            raise ConfigError(
                f"measure() returned no finite value for {missing}",
                "make measure return every objective metric",
            )
        trial.set_user_attr("metrics", metrics)
        return [metrics[m] for m in objectives]

    study.optimize(objective, n_trials=n_trials, catch=())
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    results = [
        TrialResult(
            t.number,
            dict(t.params),
            dict(t.user_attrs["metrics"]),
            bool(feasible(t.user_attrs["metrics"])) if feasible else True,
        )
        for t in done
    ]
    front = pareto_front(results, objectives)
    first, d0 = next(iter(objectives)), dirs[0]
    ok = [t for t in front if t.feasible]
    best = (min if d0 == "minimize" else max)(ok, key=lambda t: t.metrics[first]) if ok else None
    return SearchResult(dict(zip(objectives, dirs, strict=True)), results, front, best, study)


def plot_front(
    result: SearchResult,
    path: str | Path,
    x: str | None = None,
    y: str | None = None,
    limits: dict[str, float] | None = None,
) -> Path:
    """Scatter every trial on two objectives, the Pareto front joined, target limits drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.objectives)
    if len(names) < 2 and (x is None or y is None):
        raise ConfigError(
            "a front plot needs two objectives", "search on two metrics, or pass x= and y="
        )
    x, y = x or names[1], y or names[0]
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    ax.scatter(
        [t.metrics[x] for t in result.trials],
        [t.metrics[y] for t in result.trials],
        c="#bbb",
        label="trial",
    )
    front = sorted(result.front, key=lambda t: t.metrics[x])
    ax.plot(
        [t.metrics[x] for t in front],
        [t.metrics[y] for t in front],
        "o-",
        c="#1f6feb",
        label="Pareto front",
    )
    if result.best is not None:
        ax.scatter(
            [result.best.metrics[x]],
            [result.best.metrics[y]],
            s=160,
            facecolors="none",
            edgecolors="#d1242f",
            linewidths=2,
            label="chosen",
        )
    for metric, value in (limits or {}).items():
        if metric == x:
            ax.axvline(value, ls="--", c="#d1242f", lw=1)
        elif metric == y:
            ax.axhline(value, ls="--", c="#d1242f", lw=1)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)
