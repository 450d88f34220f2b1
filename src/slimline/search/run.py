"""``run_search``: a recipe's ``search:`` section as an Optuna multi-objective study.

Each trial is a recipe run of its own, registered as a candidate (``slimline.search.study``).
When the budget is spent: engine costs (latency, memory) are measured for the trials on or near
the front of the cheap objectives only, every target is checked, and the result is the Pareto
front (table, ``front.png``, ``search.json``) and the best trial that meets every target — or,
when none does, the nearest trials and by how much each misses which target.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimline.errors import ConfigError, TargetError
from slimline.figures import save_png
from slimline.recipe.schema import Recipe, load_recipe
from slimline.recipe.targets import MET, MISSED, check_targets
from slimline.search.cost import estimate, model_shape
from slimline.search.space import (
    COST_PREFIXES,
    apply_point,
    base_stages,
    corner_points,
    directions,
)
from slimline.search.study import (
    STUDY_DB,
    Worker,
    cheap_objectives,
    create_study,
    load_study,
    storage_url,
    study_name,
)

SUMMARY = "search.json"
PLOT = "front.png"


@dataclass
class TrialResult:
    number: int
    params: dict[str, Any]
    metrics: dict[str, float]
    feasible: bool
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    artifact: str | None = None
    registered: str | None = None
    same_as: int | None = None
    cost_measured: bool = False


@dataclass
class SearchResult:
    objectives: dict[str, str]
    trials: list[TrialResult]
    front: list[TrialResult]
    best: TrialResult | None
    nearest: list[dict[str, Any]] = field(default_factory=list)
    pruned: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    study: str = ""
    storage: str = ""
    run_dir: Path | None = None
    summary: Path | None = None
    plot: Path | None = None

    def table(self) -> list[dict[str, Any]]:
        """One row per finished trial: its parameters, metrics, front membership, verdict."""
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "storage": self.storage,
            "objectives": self.objectives,
            "front": [t.number for t in self.front],
            "best": None if self.best is None else self.best.number,
            "nearest": self.nearest,
            "trials": [asdict(t) for t in self.trials],
            "pruned": self.pruned,
            "failed": self.failed,
            "plot": str(self.plot) if self.plot else None,
        }


# --- the front -----------------------------------------------------------------------------------


def _dominates(a: list[float], b: list[float], dirs: list[str]) -> bool:
    signs = [1 if d == "minimize" else -1 for d in dirs]
    at = [s * v for s, v in zip(signs, a, strict=True)]
    bt = [s * v for s, v in zip(signs, b, strict=True)]
    return all(x <= y for x, y in zip(at, bt, strict=True)) and any(
        x < y for x, y in zip(at, bt, strict=True)
    )


def pareto_front(trials: list[TrialResult], objectives: dict[str, str]) -> list[TrialResult]:
    """The trials no other trial dominates on ``objectives`` (trials missing a value are left
    out; equal points are all kept)."""
    dirs = directions(objectives)
    have = [t for t in trials if all(_finite(t.metrics.get(m)) for m in objectives)]
    vals = [[t.metrics[m] for m in objectives] for t in have]
    return [
        t
        for t, v in zip(have, vals, strict=True)
        if not any(_dominates(o, v, dirs) for o in vals if o is not v)
    ]


def front_layers(trials: list[TrialResult], objectives: dict[str, str]) -> list[list[TrialResult]]:
    """Non-dominated sorting: the front, then the front of what is left, and so on."""
    left, layers = list(trials), []
    while left:
        layer = pareto_front(left, objectives)
        if not layer:
            break
        layers.append(layer)
        ids = {id(t) for t in layer}
        left = [t for t in left if id(t) not in ids]
    return layers


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


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
    x = x or ("size/bytes" if "size/bytes" in names else names[1])
    y = y or next(n for n in names if n != x)
    pts = [
        t
        for t in result.trials
        if t.same_as is None and _finite(t.metrics.get(x)) and _finite(t.metrics.get(y))
    ]
    sx = 1e-6 if x == "size/bytes" else 1.0  # bytes drawn as MB
    sy = 1e-6 if y == "size/bytes" else 1.0
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    ax.scatter(
        [t.metrics[x] * sx for t in pts], [t.metrics[y] * sy for t in pts], c="#bbb", label="trial"
    )
    for t in pts:
        ax.annotate(f" {t.number}", (t.metrics[x] * sx, t.metrics[y] * sy), fontsize=8, alpha=0.8)
    front = sorted(
        [t for t in result.front if t in pts], key=lambda t: (t.metrics[x], t.metrics[y])
    )
    # on two objectives the front is a staircase to join; on more, its members are marked only
    # (a point can be on the front through an objective this plane does not show)
    ax.plot(
        [t.metrics[x] * sx for t in front],
        [t.metrics[y] * sy for t in front],
        "o-" if len(names) == 2 else "o",
        c="#1f6feb",
        label="Pareto front" if len(names) == 2 else f"on the front of all {len(names)} objectives",
    )
    if result.best is not None and result.best in pts:
        ax.scatter(
            [result.best.metrics[x] * sx],
            [result.best.metrics[y] * sy],
            s=160,
            facecolors="none",
            edgecolors="#d1242f",
            linewidths=2,
            label="chosen (meets every target)",
        )
    drawn = [(m, v) for m, v in (limits or {}).items() if m in (x, y)]
    for i, (metric, value) in enumerate(drawn):
        line = ax.axvline if metric == x else ax.axhline
        line(
            value * (sx if metric == x else sy),
            ls="--",
            c="#d1242f",
            lw=1,
            label="target" if i == 0 else None,
        )
    ax.set_xlabel("size (MB)" if sx != 1 else x)
    ax.set_ylabel("size (MB)" if sy != 1 else y)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


# --- running a search ----------------------------------------------------------------------------


def check_reachable(recipe: Recipe, shape: Any) -> None:
    """Refuse, before anything is written, a size target no point of the space can reach
    (every combination of choices and range ends, estimated analytically)."""
    limit = recipe.targets.max_size_mb
    s = recipe.search
    if limit is None or s is None:
        return
    stages = base_stages(recipe)
    best: tuple[float, dict[str, Any]] | None = None
    for point in corner_points(s.space):
        try:
            est = estimate(shape, apply_point(stages, point))
        except ConfigError:  # a combination the configs refuse is never run either
            continue
        if est is None:
            return  # a stage with no size rule: cannot prove anything
        mb = est.bytes / 1e6
        if best is None or mb < best[0]:
            best = (mb, point)
    if best is not None and best[0] > limit:
        raise TargetError(
            f"{recipe.source or recipe.name}: targets.max_size_mb {limit:g} is below the smallest "
            f"artifact this search space can make (about {best[0]:.2f} MB, at {best[1]})",
            "raise max_size_mb, or widen the space (fewer bits, more sparsity, more stages)",
        )


def run_search(
    recipe: Recipe | str | os.PathLike[str],
    run_dir: str | os.PathLike[str] | None = None,
    *,
    workers: int = 1,
    storage: str | None = None,
    registry_home: Any = None,
    register: bool = True,
    threads: int | None = None,
) -> SearchResult:
    """Run the study of ``recipe``'s ``search:`` section in ``run_dir`` (default
    ``runs/<name>``) and report its front. ``workers`` > 1 starts that many worker processes
    in all on this machine (more can join from anywhere with ``slimline search worker``); a
    resumed study keeps its finished trials. Everything that can refuse the search (the
    recipe, the storage, a size target no point reaches) does so before anything is written."""
    from slimline.models import load_model
    from slimline.outputs import check_output

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, check=False)
    if recipe.search is None:
        raise ConfigError(
            f"recipe {recipe.name!r} has no search: section", "run it with `slimline run`"
        )
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}", "use --workers 1 or more")
    out = Path(run_dir) if run_dir is not None else Path("runs") / recipe.name
    check_output(out, replace=True, what="run dir")
    held = (out / STUDY_DB).exists() or (out / "trials").exists()
    if out.is_dir() and any(out.iterdir()) and not held:
        raise ConfigError(
            f"{out} is not empty and holds no search", "choose another run dir with -o"
        )
    shape = model_shape(load_model(recipe.model))
    check_reachable(recipe, shape)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage or recipe.search.storage, out)
    try:
        study = create_study(recipe, url)
    except BaseException:
        if created:  # a storage that does not open leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    procs = [_spawn_worker(study.study_name, url, out, i, threads) for i in range(1, workers)]
    try:
        Worker(
            recipe, study, out, registry_home, register, threads, seed_offset=0, shape=shape
        ).work()
    finally:
        for p in procs:
            p.wait()
    return finish(recipe, study, out, url, registry_home)


def _spawn_worker(name: str, url: str, run_dir: Path, index: int, threads: int | None) -> Any:
    cmd = [sys.executable, "-m", "slimline.cli", "search", "worker", name, "--storage", url]
    cmd += ["--run-dir", str(run_dir), "--index", str(index)]
    if threads:
        cmd += ["--threads", str(threads)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL)


def join_study(
    name: str,
    storage: str,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    index: int | None = None,
    registry_home: Any = None,
    register: bool = True,
    threads: int | None = None,
) -> list[int]:
    """Join study ``name`` at ``storage`` as one more worker; returns the trials it ran.

    Its trials run under ``run_dir`` (default: the SQLite file's folder, else ``runs/<name>``)."""
    url = storage_url(storage, Path("."))
    study, recipe = load_study(name, url)
    if run_dir is None:
        run_dir = (
            Path(url.removeprefix("sqlite:///")).parent if url.startswith("sqlite:///") else None
        )
    out = Path(run_dir) if run_dir is not None else Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    offset = index if index is not None else os.getpid()
    w = Worker(recipe, study, out, registry_home, register, threads, seed_offset=offset)
    return w.work()


def report_study(
    name: str,
    storage: str,
    run_dir: str | os.PathLike[str] | None = None,
    registry_home: Any = None,
) -> SearchResult:
    """The front and verdicts of an existing study (engine costs measured where missing)."""
    url = storage_url(storage, Path("."))
    study, recipe = load_study(name, url)
    if run_dir is None:
        run_dir = (
            Path(url.removeprefix("sqlite:///")).parent if url.startswith("sqlite:///") else None
        )
    out = Path(run_dir) if run_dir is not None else Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    return finish(recipe, study, out, url, registry_home)


# --- after the budget: engine costs near the front, verdicts, summary ---------------------------


def _needs_cost(recipe: Recipe) -> bool:
    s, t = recipe.search, recipe.targets
    assert s is not None
    cost_target = (
        t.max_prefill_ms is not None
        or t.min_decode_tok_s is not None
        or t.max_memory_mb is not None
        or any(m.startswith(COST_PREFIXES) for m in t.max_quality_loss)
    )
    return recipe.eval.latency is not None and (
        cost_target or any(m.startswith(COST_PREFIXES) for m in s.objectives)
    )


def _primary_latency(recipe: Recipe) -> Any:
    lat = recipe.eval.latency
    return lat[0] if isinstance(lat, list) else lat


def _cost(t: TrialResult, recipe: Recipe, home: Any) -> dict[str, Any]:
    """Engine cost of a trial's artifact, measured once and kept in its run dir."""
    import json

    from slimline.artifact import load_artifact
    from slimline.models import LoadedModel
    from slimline.models.arch import get_arch
    from slimline.recipe import measure
    from slimline.recipe.runner import _write_json

    assert t.artifact is not None
    f = Path(t.artifact).parent / "cost.json"
    lat = _primary_latency(recipe)
    if f.exists():
        held = json.loads(f.read_text())
        if held.get("latency") == lat.model_dump():
            return held["metrics"]
    path = Path(t.artifact)
    model, tok, manifest = load_artifact(path, home=home)  # verified by the key that signed it
    lm = LoadedModel(model, tok, get_arch(model), "causal-lm", str(path), path, manifest)
    m = measure.cost(lm, lat)
    _write_json(f, {"latency": lat.model_dump(), "metrics": m})
    return m


def finish(
    recipe: Recipe, study: Any, run_dir: Path, url: str, registry_home: Any = None
) -> SearchResult:
    """Collect the study's trials, measure engine costs near the front, check every target,
    pick the best feasible trial (or the nearest misses), write ``search.json`` and the plot."""
    from optuna.trial import TrialState

    from slimline.recipe.runner import _write_json

    s = recipe.search
    assert s is not None
    objectives = dict(zip(s.objectives, directions(s.objectives), strict=True))
    cheap = cheap_objectives(recipe)
    trials, baselines, pruned, failed = [], {}, [], []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        if t.state == TrialState.COMPLETE and "metrics" in ua:
            reg = (ua.get("registered") or {}).get("ref")
            trials.append(
                TrialResult(
                    t.number,
                    dict(t.params),
                    dict(ua["metrics"]),
                    False,
                    list(ua.get("verdicts", [])),
                    ua.get("artifact"),
                    reg,
                    ua.get("same_as"),
                )
            )
            baselines[t.number] = ua.get("baseline", {})
        elif t.state == TrialState.PRUNED:
            pruned.append({"trial": t.number, "params": dict(t.params), "reason": ua.get("reason")})
        elif t.state == TrialState.FAIL:
            reason = ua.get("error") or (
                f"worker {ua.get('worker', '?')} stopped sending heartbeats mid-trial "
                f"(silent > {3 * max(1, round(s.heartbeat_s))} s): marked failed"
                + ("" if "retry_of" in ua else "; its point was queued again")
            )
            failed.append({"trial": t.number, "params": dict(t.params), "reason": reason})
    distinct = [t for t in trials if t.same_as is None]
    if _needs_cost(recipe):
        layers = front_layers(distinct, cheap)
        for layer in layers[: 1 + s.near_front]:
            for t in layer:
                t.metrics.update(_cost(t, recipe, registry_home))
                t.cost_measured = True
    for t in trials:  # a reused point has its twin's measurements, engine costs included
        twin = next((o for o in distinct if o.number == t.same_as), None)
        if twin is not None:
            t.metrics, t.cost_measured = dict(twin.metrics), twin.cost_measured
    for t in trials:
        v = check_targets(recipe.targets, t.metrics, baselines.get(t.number, {}))
        t.verdicts = [x.to_dict() for x in v]
        t.feasible = all(x.met for x in v)
    for t in trials:  # the engine setup (a dict) stays in the verdicts' text and cost.json
        t.metrics = {k: x for k, x in t.metrics.items() if _finite(x)}
    front = pareto_front(distinct, objectives)
    ok = [t for t in distinct if t.feasible and all(_finite(t.metrics.get(m)) for m in objectives)]
    best = None
    if ok:
        signs = [1 if d == "minimize" else -1 for d in objectives.values()]
        best = min(
            ok, key=lambda t: [sg * t.metrics[m] for sg, m in zip(signs, objectives, strict=True)]
        )
    res = SearchResult(
        objectives,
        trials,
        front,
        best,
        [] if best is not None else nearest_misses(distinct),
        pruned,
        failed,
        study.study_name,
        url,
        run_dir,
    )
    if len(objectives) >= 2 and front:
        limits = {}
        if recipe.targets.max_size_mb is not None:
            limits["size/bytes"] = recipe.targets.max_size_mb * 1e6
        if recipe.targets.min_decode_tok_s is not None:
            limits["latency/decode_tok_s"] = recipe.targets.min_decode_tok_s.value
        if recipe.targets.max_prefill_ms is not None:
            limits["latency/prefill_ms"] = recipe.targets.max_prefill_ms.value
        res.plot = plot_front(res, run_dir / PLOT, limits=limits)
    res.summary = run_dir / SUMMARY
    _write_json(res.summary, res.to_dict())
    return res


def nearest_misses(trials: list[TrialResult], n: int = 3) -> list[dict[str, Any]]:
    """The ``n`` trials closest to meeting every target, each with the targets it misses and
    by how much (relative to the limit); a target not measured counts as far."""
    rows = []
    for t in trials:
        gaps = []
        for v in t.verdicts:
            if v["status"] == MET:
                continue
            if v["status"] == MISSED and v["limit"]:
                rel = abs(v["value"] - v["limit"]) / abs(v["limit"])
                gaps.append(
                    {
                        "target": v["target"],
                        "value": v["value"],
                        "limit": v["limit"],
                        "gap": rel,
                        "text": v["text"],
                    }
                )
            else:
                gaps.append(
                    {
                        "target": v["target"],
                        "value": None,
                        "limit": v["limit"],
                        "gap": None,
                        "text": v["text"],
                    }
                )
        unmeasured = sum(g["gap"] is None for g in gaps)
        total = sum(g["gap"] for g in gaps if g["gap"] is not None)
        rows.append((unmeasured, total, {"trial": t.number, "params": t.params, "misses": gaps}))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in rows[:n]]


__all__ = [
    "SearchResult",
    "TrialResult",
    "check_reachable",
    "finish",
    "front_layers",
    "join_study",
    "nearest_misses",
    "pareto_front",
    "plot_front",
    "report_study",
    "run_search",
    "study_name",
]
