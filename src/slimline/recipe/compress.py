"""The compress commands (``slimline quantize / prune / distill``) as recipes.

Each command's flags become stages and data settings; this module makes them a recipe and runs
it with the one runner (``run_recipe``), so a command's output is the same signed artifact, with
the same manifest and stage trace, as ``slimline run`` of those stages. The artifact goes where
the command was told (``-o``); the run dir (run.json, checkpoints, report) goes under the slimline
home, named by the output and the work, so the same command run again resumes a killed run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from slimline.core import TechniqueConfig
from slimline.outputs import check_output
from slimline.recipe.runner import RunResult, run_recipe
from slimline.recipe.schema import Data, DataSplit, EvalSuite, Recipe


def compress_recipe(
    name: str,
    model: str,
    stages: list[TechniqueConfig],
    *,
    calibration: DataSplit | None = None,
    train: DataSplit | None = None,
    seed: int = 0,
    stream: bool | None = None,
) -> Recipe:
    """A recipe of ``stages`` on ``model``: measured for parameters and size only (no quality
    or latency suite: the commands never evaluated; ``slimline eval`` does). ``stream``: the
    recipe's ``stream:`` (True: block by block, ``slimline.recipe.streamed``)."""
    return Recipe(
        name=name,
        model=str(model),
        data=Data(calibration=calibration or DataSplit(), train=train, seed=seed),
        stages=stages,
        eval=EvalSuite(datasets=[], metrics=[], latency=None),
        stream=stream,
    )


def compress_run_dir(recipe: Recipe, out: str | os.PathLike[str], home: Any = None) -> Path:
    """Where a compress command keeps its run: ``<home>/runs/<recipe>-<out name>-<12 hex>``, the
    hex from the output's absolute path and the recipe's work digest (same command, same run
    dir; a resumed distillation with more steps has the same work digest)."""
    from slimline.artifact.keys import home_dir

    key = f"{Path(out).expanduser().resolve()}\0{recipe.work_digest()}"
    tag = hashlib.sha256(key.encode()).hexdigest()[:12]
    return home_dir(home) / "runs" / f"{recipe.name}-{Path(out).name}-{tag}"


def compress(
    recipe: Recipe,
    out: str | os.PathLike[str],
    *,
    replace: bool = False,
    what: str = "output",
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool | None = None,
    register: bool = True,
    report: bool = True,
    threads: int | None = None,
    home: Any = None,
) -> RunResult:
    """Run ``recipe`` with its final artifact at ``out`` and its run dir at ``run_dir`` (default
    ``compress_run_dir``). ``out`` must be new, or with ``replace`` an artifact (a continued
    run rewrites it); checked, as ``what``, before the model loads."""
    from slimline.artifact.spec import is_artifact

    check_output(out, replace=is_artifact if replace else False, what=what)
    where = Path(run_dir) if run_dir is not None else compress_run_dir(recipe, out, home)
    return run_recipe(
        recipe,
        where,
        resume=resume,
        register=register,
        registry_home=home,
        report=report,
        threads=threads,
        artifact_dir=out,
    )


def summary(res: RunResult) -> dict[str, Any]:
    """What a compress command prints: where things went, and the last stage's typed record."""
    last = res.stages[-1]["record"] if res.stages else {}
    return {
        "out": str(res.artifact),
        "run_dir": str(res.run_dir),
        "digest": res.digest,
        "registered": (res.registered or {}).get("ref"),
        "size_bytes": int(res.final.get("size/bytes", 0)),
        "params": int(res.final.get("params/total", 0)),
        "seconds": round(sum(s["wall_s"] for s in res.stages), 2),
        "resumed_stages": res.resumed_from,
        "stages": [s["record"] for s in res.stages],
        "details": last.get("details", {}),
        # a streamed stage's peak RSS and activation figures (slimline.calib.stream)
        **(res.stages[-1].get("stream", {}) if res.stages else {}),
    }
