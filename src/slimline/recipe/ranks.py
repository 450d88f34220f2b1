"""A recipe run under ``accelerate launch --num_processes N`` (issue 15): one writer.

Every process runs ``slimline run`` / ``slimline distill``, but only the main process runs the
recipe (``run_recipe``): it loads, measures, writes the run dir, the checkpoints, the artifact,
the registry row and the report. The other processes *follow*: they take part only in the
stages that train (data-parallel: each holds a replica and a share of every batch), and write
nothing themselves (the trainer's checkpoints are collective; the main process renames them).

The two sides meet at barriers, one before each training stage and one at the end:

- before training stage ``i`` the main process has finished (and checkpointed) the stages
  before it and saved ``run.json``; a follower then reads ``run.json`` to know whether the
  main process will run stage ``i`` (a resumed run may have finished it) and, if so, loads the
  model as it was before it (the base model, or stage ``i-1``'s verified checkpoint), exactly
  as a resumed main process does;
- at the end the main process has written and registered the artifact; every follower
  returns (the CLI prints nothing there and exits 0).

A process that fails ends the launch (torch's launcher stops the others).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from slimline.recipe.schema import Recipe


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _state() -> Any:
    from accelerate import PartialState

    from slimline.distill.trainer import _cpu_processes

    return PartialState(cpu=_cpu_processes())  # as the trainer's Accelerator sets it up


def is_main() -> bool:
    """True for a plain run, and for the main process of a multi-process launch."""
    return world_size() == 1 or _state().is_main_process


def barrier() -> None:
    """Wait for every process of a multi-process launch (a no-op in a plain run)."""
    if world_size() > 1:
        _state().wait_for_everyone()


def before_stage(cfg: Any) -> None:
    """The main process's side of the barrier before each stage that trains."""
    if "train" in cfg.requires():
        barrier()


def _finished(recipe: Recipe, state: dict[str, Any]) -> int:
    """How many leading stages the main process takes as done (``run_recipe``'s own rule)."""
    n = 0
    for j, st in enumerate(state.get("stages", [])):
        if j >= len(recipe.stages) or st.get("config") != recipe.stages[j].to_dict():
            break
        n += 1
    return n


def follow(recipe: Recipe, out: Path, *, registry_home: Any, threads: int | None) -> Any:
    """A non-main process's part of ``run_recipe``: the training stages, nothing written."""
    from slimline.core import apply_technique, set_threads
    from slimline.models import load_model
    from slimline.models.arch import get_arch
    from slimline.recipe import runner as R
    from slimline.runstate import read_run_state

    set_threads(threads)
    run: Any = None
    base: Any = None
    for i, cfg in enumerate(recipe.stages):
        if "train" not in cfg.requires():
            continue
        barrier()  # the main process has checkpointed every stage before this one
        state = read_run_state(out)
        if i < _finished(recipe, state):
            continue  # finished in an earlier run: the main process skips it too
        if run is None:
            run = R._Run(recipe, out, threads=threads)
            base = load_model(recipe.model)
            run.eval_sets = {}
            run.supplies(base)
        if i == 0:
            lm = load_model(recipe.model)
        else:
            ck = state["stages"][i - 1]["checkpoint"]
            lm = R._load_checkpoint(out / ck, base, registry_home)
        ctx = run.context(lm)
        R._seed(recipe.data.seed + i)
        with torch.set_grad_enabled(True):
            apply_technique(lm.model, cfg, run.for_stage(ctx, cfg))
        lm.arch = get_arch(lm.model)
    barrier()  # the main process has written the artifact, the registry row and the report
    res = R.RunResult(out, recipe, {}, [], {}, [])
    res.extra["follower"] = _state().process_index
    return res
