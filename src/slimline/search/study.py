"""The Optuna study behind a search recipe: storage, the budget shared by many workers, trials.

Every worker (the ``slimline run`` process, ``slimline search worker`` on this or another
machine) opens the same study through Optuna's storage — ``RUN_DIR/study.db`` (SQLite) by
default, any database URL Optuna accepts for a cluster — and loops: fail the trials of workers
that stopped sending heartbeats (their point is queued again once, and resumes from the dead
trial's checkpoints), stop when the budget is spent, else ask for a trial and run it. Asking
happens under a file lock in the run dir, so workers sharing it never overshoot the trial budget.

A trial is a recipe run of its own (``run_recipe`` in ``RUN_DIR/trials/<n>``) with the point's
parameters substituted, latency off (measured later, near the front only), registered as a
candidate. Before it runs, its artifact size is estimated (``slimline.search.cost``); a point
that cannot meet ``max_size_mb`` is pruned without running, and a point equal to a finished one
takes that trial's results instead of running again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimline.core import TechniqueConfig
from slimline.errors import ConfigError, SlimlineError
from slimline.recipe.schema import Recipe, Targets, parse_recipe
from slimline.search.cost import Estimate, Shape, estimate, model_shape
from slimline.search.space import (
    COST_PREFIXES,
    base_stages,
    directions,
    point_key,
    recipe_data,
    suggest,
)

log = logging.getLogger("slimline")

STUDY_DB = "study.db"
LOCK_FILE = ".study.lock"
RECIPE_ATTR = "slimline_recipe"


def storage_url(spec: str | None, run_dir: Path) -> str:
    """An Optuna storage URL: a URL as given, a file path as SQLite, default RUN_DIR/study.db."""
    if spec is None:
        return f"sqlite:///{(run_dir / STUDY_DB).resolve()}"
    if "://" in spec:
        return spec
    return f"sqlite:///{Path(spec).expanduser().resolve()}"


def _dead_worker(study: Any, trial: Any) -> None:
    """A trial whose worker stopped sending heartbeats was marked FAIL: queue its point again,
    once, so the budget is still spent on it (it resumes from the dead trial's checkpoints)."""
    if "retry_of" in trial.user_attrs or not trial.params:
        return
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def open_storage(url: str, heartbeat_s: float) -> Any:
    """RDB storage with heartbeats: a worker silent for 3 x ``heartbeat_s`` is declared dead."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kw: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kw["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    interval = max(1, round(heartbeat_s))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=interval,
                grace_period=3 * interval,
                heartbeat_stale_trial_callback=_dead_worker,
                **kw,
            )
    except Exception as e:  # a bad URL, a server that is down, a driver that is missing
        raise ConfigError(
            f"cannot open the study storage {url!r}: {e}",
            "give a file path or a database URL Optuna accepts (sqlite:///x.db, postgresql://...)",
        ) from e


def cheap_objectives(recipe: Recipe) -> dict[str, str]:
    """The objectives every trial measures (what Optuna optimises); engine costs are measured
    later, near the front. With only cost objectives, the study minimises size."""
    s = recipe.search
    assert s is not None
    objs = dict(zip(s.objectives, directions(s.objectives), strict=True))
    cheap = {m: d for m, d in objs.items() if not m.startswith(COST_PREFIXES)}
    return cheap or {"size/bytes": "minimize"}


def study_digest(recipe: Recipe) -> str:
    """What decides a study's trials: the work of the recipe, the space, the objectives, the
    seed and the size limit that prunes. Not the budget: a larger budget goes on with the same
    study, keeping its finished trials."""
    s = recipe.search
    assert s is not None
    key = {
        "work": recipe.model_copy(update={"search": None}).work_digest(),
        "space": s.space,
        "objectives": s.objectives,
        "seed": s.seed,
        "max_size_mb": recipe.targets.max_size_mb,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def study_name(recipe: Recipe) -> str:
    s = recipe.search
    assert s is not None
    return s.study or f"{recipe.name}-{study_digest(recipe)[:12]}"


def create_study(recipe: Recipe, url: str) -> Any:
    """Create (or load, when it exists with this recipe) the study of ``recipe`` at ``url``."""
    import optuna

    s = recipe.search
    assert s is not None
    name = study_name(recipe)
    storage = open_storage(url, s.heartbeat_s)
    cheap = cheap_objectives(recipe)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=list(cheap.values()),
        load_if_exists=True,
    )
    held = study.user_attrs.get(RECIPE_ATTR)
    if held is not None and study_digest(parse_recipe(held)) != study_digest(recipe):
        raise ConfigError(
            f"study {name!r} at {url} holds another recipe ({held.get('name')!r})",
            "name another study (search.study), or use another storage / run dir",
        )
    if held != recipe_data(recipe):  # new, or a new budget: joining workers read it from here
        study.set_user_attr(RECIPE_ATTR, recipe_data(recipe))
    return study


def load_study(name: str, url: str) -> tuple[Any, Recipe]:
    """Join an existing study: the study and the recipe it was created with."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    probe = open_storage(url, 10)
    names = [s.study_name for s in probe.get_all_studies()]
    if name not in names:
        raise ConfigError(
            f"no study named {name!r} at {url}",
            f"studies there: {', '.join(names) or '(none)'}; start one with `slimline run RECIPE`",
        )
    held = optuna.load_study(study_name=name, storage=probe).user_attrs.get(RECIPE_ATTR)
    if held is None:
        raise ConfigError(
            f"study {name!r} was not made by slimline (no recipe stored with it)",
            "start the study with `slimline run RECIPE`",
        )
    recipe = parse_recipe(held, f"study {name}")
    assert recipe.search is not None
    storage = open_storage(url, recipe.search.heartbeat_s)
    return optuna.load_study(study_name=name, storage=storage), recipe


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's notes about its own API (heartbeats are "experimental", and "meant for
    Study.optimize": we drive them ourselves with ask/tell) are not the user's business."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        yield


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    with open(run_dir / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def counted(trials: list[Any]) -> int:
    """Trials that spend the budget: finished, pruned, failed with an error, running or
    queued. A trial failed because its worker died does not (its point is queued again)."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return sum(
        1
        for t in trials
        if t.state in live or (t.state == TrialState.FAIL and "error" in t.user_attrs)
    )


class _Heartbeat:
    """Records the trial's heartbeat every interval from a thread, while the trial runs."""

    def __init__(self, storage: Any, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):  # a missed beat is retried next interval
                self.storage.record_heartbeat(self.trial_id)
            self.stop.wait(self.interval)

    def __enter__(self) -> _Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class Worker:
    """One worker of a study: the recipe, where trials run, and what each trial needs."""

    recipe: Recipe
    study: Any
    run_dir: Path
    registry_home: Any = None
    register: bool = True
    threads: int | None = None
    seed_offset: int = 0
    shape: Shape | None = None
    ran: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        import optuna

        s = self.recipe.search
        assert s is not None
        self.space = s.space
        self.stages = base_stages(self.recipe)
        self.objectives = cheap_objectives(self.recipe)
        n = s.budget.trials or 20
        self.study.sampler = optuna.samplers.TPESampler(
            seed=s.seed + self.seed_offset, n_startup_trials=max(3, min(10, n // 3))
        )

    # --- the loop ---------------------------------------------------------------------------

    def work(self) -> list[int]:
        """Run trials until the budget (trials in the study, or this worker's minutes) is spent
        and no other worker's trial is still running; returns the trial numbers run here."""
        import optuna

        s = self.recipe.search
        assert s is not None
        deadline = time.monotonic() + 60 * s.budget.minutes if s.budget.minutes else None
        if self.shape is None:
            from slimline.models import load_model

            self.shape = model_shape(load_model(self.recipe.model))
        while True:
            with _locked(self.run_dir), _quiet():
                optuna.storages.fail_stale_trials(self.study)
                trials = self.study.get_trials(deepcopy=False)
                queued = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
                spent = s.budget.trials is not None and counted(trials) >= s.budget.trials
                late = deadline is not None and time.monotonic() > deadline
                # a queued point (a dead worker's, re-queued) is part of the budget already
                trial = None if late or (spent and not queued) else self.study.ask()
            if trial is None:
                others = any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
                if late or not others:
                    return self.ran
                time.sleep(s.heartbeat_s)  # a dead worker's trial comes back to the queue
                continue
            self.run_trial(trial)

    def run_trial(self, trial: Any) -> None:
        import optuna
        from optuna.trial import TrialState

        s = self.recipe.search
        assert s is not None
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            with _Heartbeat(self.study._storage, trial._trial_id, s.heartbeat_s):
                values = self._objective(trial)
        except optuna.TrialPruned as e:
            trial.set_user_attr("reason", str(e))
            with _quiet():
                self.study.tell(trial, state=TrialState.PRUNED)
            return
        except SlimlineError as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e.problem}")
            with _quiet():
                self.study.tell(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, e.problem)
            return
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            with _quiet():
                self.study.tell(trial, state=TrialState.FAIL)
            raise
        except BaseException:  # interrupted: not counted, a resumed study runs it again
            with _quiet():
                self.study.tell(trial, state=TrialState.FAIL)
            raise
        with _quiet():
            self.study.tell(trial, values)
        self.ran.append(trial.number)

    # --- one trial ----------------------------------------------------------------------------

    def _objective(self, trial: Any) -> list[float]:
        import optuna

        try:
            stages = suggest(trial, self.stages, self.space)
        except ConfigError as e:
            raise optuna.TrialPruned(f"invalid combination: {e.problem}") from e
        key = hashlib.sha256(point_key(stages).encode()).hexdigest()[:16]
        trial.set_user_attr("point", key)
        trial.set_user_attr("stages", [{c.kind: c.to_dict()} for c in stages])
        same = self._finished_twin(key, trial.number)
        if same is not None:  # the same recipe already ran: take its results
            for k in ("metrics", "baseline", "verdicts", "run_dir", "artifact", "registered"):
                if k in same.user_attrs:
                    trial.set_user_attr(k, same.user_attrs[k])
            trial.set_user_attr("same_as", same.number)
            return list(same.values)
        assert self.shape is not None
        try:
            est = estimate(self.shape, stages)
        except ConfigError as e:  # the technique would refuse it on this model
            raise optuna.TrialPruned(f"invalid on this model: {e.problem}") from e
        if est is not None:
            trial.set_user_attr("estimate", est.metrics())
            self._prune_on_size(est)
        retry = trial.user_attrs.get("retry_of")
        where = self.run_dir / "trials" / f"{retry if retry is not None else trial.number:04d}"
        trial.set_user_attr("run_dir", str(where))
        metrics, baseline, res = self._run(trial.number, stages, where)
        if est is not None:
            metrics.setdefault("flops/weights_per_token", est.flops)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("baseline", baseline)
        trial.set_user_attr("verdicts", [v.to_dict() for v in res.verdicts])
        trial.set_user_attr("artifact", str(res.artifact))
        if res.registered:
            trial.set_user_attr("registered", res.registered)
        missing = [m for m in self.objectives if m not in metrics]
        if missing:
            raise ConfigError(
                f"trial {trial.number} measured no {missing}",
                "objectives must be metrics the recipe's eval measures",
            )
        return [float(metrics[m]) for m in self.objectives]

    def _finished_twin(self, key: str, number: int) -> Any:
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number != number and t.user_attrs.get("point") == key:
                return t
        return None

    def _prune_on_size(self, est: Estimate) -> None:
        import optuna

        limit = self.recipe.targets.max_size_mb
        if limit is not None and est.bytes / 1e6 > limit:
            raise optuna.TrialPruned(
                f"estimated size {est.bytes / 1e6:.2f} MB > max_size_mb {limit:g}: not run"
            )

    def _run(
        self, number: int, stages: list[TechniqueConfig], where: Path
    ) -> tuple[dict[str, float], dict[str, float], Any]:
        from slimline.recipe.runner import run_recipe

        rec = trial_recipe(self.recipe, stages, number)
        res = run_recipe(
            rec,
            where,
            register=False,
            report=False,
            registry_home=self.registry_home,
            threads=self.threads,
            manifest_extra={
                "search": {
                    "status": "candidate",
                    "study": self.study.study_name,
                    "trial": number,
                    "recipe": self.recipe.name,
                }
            },
        )
        if self.register:
            res.registered = register_candidate(self.recipe, res, self.registry_home)
        num = {k: float(v) for k, v in res.final.items() if _is_num(v)}
        base = {k: float(v) for k, v in res.baseline["metrics"].items() if _is_num(v)}
        return num, base, res


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def trial_recipe(recipe: Recipe, stages: list[TechniqueConfig], number: int) -> Recipe:
    """The plain recipe one trial runs: the point's stages, no search, latency off (and the
    latency/memory targets with it: they are judged after the engine measures the front). Its
    name stays the recipe's, so every trial's baseline is the same artifact (one digest)."""
    t = recipe.targets
    targets = Targets(
        max_size_mb=t.max_size_mb,
        max_quality_loss={
            m: v for m, v in t.max_quality_loss.items() if not m.startswith(COST_PREFIXES)
        },
    )
    update: dict[str, Any] = {
        "stages": stages,
        "search": None,
        "targets": targets,
        # quality on the baseline and the final model only: a trial is judged by its end point
        "eval": recipe.eval.model_copy(update={"latency": None, "every_stage": False}),
    }
    if "export" in Recipe.model_fields:
        update["export"] = []
    return recipe.model_copy(update=update)


def register_candidate(recipe: Recipe, res: Any, home: Any) -> dict[str, Any]:
    """Register a trial's artifact as ``<recipe>-candidate`` (its manifest's ``search`` names
    the study and trial), child of the baseline (registered once, found by digest)."""
    from slimline.errors import RegistryError
    from slimline.registry import Registry

    reg = Registry(home)
    base_digest = res.baseline["digest"]
    try:
        base = reg.get(base_digest)
    except (RegistryError, ConfigError):
        base = reg.register(res.run_dir / "baseline", f"{recipe.name}-baseline")
    v = reg.register(res.artifact, f"{recipe.name}-candidate", parent=base.ref)
    return {"ref": v.ref, "digest": v.digest, "parent": base.ref, "home": str(reg.home)}
