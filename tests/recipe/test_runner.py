"""The runner: stage trace, checkpoints, targets, artifact + registry, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tiny_recipe
from safetensors.torch import load_file

from slimline.errors import ConfigError
from slimline.recipe import parse_recipe, run_recipe
from slimline.registry import Registry

HERE = Path(__file__).parent


def weights(artifact: Path) -> dict:
    return load_file(str(artifact / "model.safetensors"))


def test_run_traces_stages_checks_targets_and_registers(tiny_dir, tmp_path, home):
    r = parse_recipe(
        tiny_recipe(
            tiny_dir,
            [{"test.rtn": {"bits": 8}}, {"test.rtn": {"bits": 2}}],
            targets={
                "max_size_mb": 100,
                "max_memory_mb": 0.5,
                # a limit on another engine is refused by the schema (never measured)
                "max_prefill_ms": {"value": 1e6, "engine": "torch", "threads": 1},
                "max_quality_loss": {"agree/top1": "-0.01", "ppl/python-docs": 1.5},
            },
        )
    )
    res = run_recipe(r, tmp_path / "run", report=False)
    assert [s["kind"] for s in res.stages] == ["test.rtn", "test.rtn"]
    for s in res.stages:
        assert s["wall_s"] >= 0 and s["process_peak_rss_mb"] > 0
        assert {
            "ppl/python-docs",
            "kl/teacher",
            "agree/top1",
            "size/bytes",
            "latency/prefill_ms",
        } <= set(s["metrics"])
        assert (tmp_path / "run" / s["checkpoint"] / "slimline.json").exists()
    # 2-bit moves the tiny model off the teacher more than 8-bit: measured agree/top1 1.0 -> 0.95,
    # kl/teacher 2e-6 -> 6e-3
    # the final stage and the baseline were timed interleaved; the first baseline timing is kept
    assert res.stages[-1]["metrics"]["latency/setup"]["paired_with_baseline"]
    assert not res.stages[0]["metrics"]["latency/setup"]["paired_with_baseline"]
    assert res.baseline["metrics"]["latency/setup"]["paired_with_baseline"]
    assert "latency/prefill_ms" in res.baseline["unpaired_cost"]
    a8, a2 = (s["metrics"]["agree/top1"] for s in res.stages)
    k8, k2 = (s["metrics"]["kl/teacher"] for s in res.stages)
    assert a2 < a8 <= 1.0 and k2 > 10 * k8 > 0
    v = {x.target: x.status for x in res.verdicts}
    assert v["max_size_mb"] == "met"  # 16.4 MB on disk
    assert v["max_memory_mb"] == "missed"  # 12.9 MB of tensors alone
    assert v["max_prefill_ms"] == "met"  # paired torch timing, 1 thread, far under 1e6 ms
    assert v["max_quality_loss[agree/top1]"] == "missed"  # 0.95 < 1.0 - 0.01
    assert v["max_quality_loss[ppl/python-docs]"] == "met"
    # the artifact: parent = baseline, recipe + trace + verdicts in the manifest, registered
    man = json.loads((res.artifact / "slimline.json").read_text())
    assert man["parent"] == res.baseline["digest"] and man["recipe_digest"] == r.digest()
    assert len(man["stages"]) == 2 and len(man["targets"]) == 5
    reg = Registry(home)
    ver = reg.get(res.registered["ref"])
    assert ver.digest == res.digest
    assert [x.digest for x in reg.lineage(ver.ref)][-1] == res.baseline["digest"]


def test_other_recipe_refuses_to_resume_other_targets_recheck(tiny_dir, tmp_path, home):
    run_dir = tmp_path / "run"
    quick = {"windows": 1, "seq_len": 32, "latency": None}
    first = tiny_recipe(tiny_dir, [{"test.rtn": {"bits": 8}}], eval=quick)
    run_recipe(parse_recipe(first), run_dir, register=False, report=False)
    other = parse_recipe(tiny_recipe(tiny_dir, [{"test.rtn": {"bits": 4}}], eval=quick))
    with pytest.raises(ConfigError, match="another recipe"):
        run_recipe(other, run_dir, register=False, report=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_recipe(other, tmp_path / "fresh", resume=True, register=False, report=False)
    # same work, a new target: nothing re-runs, the finished model is judged again
    tighter = parse_recipe({**first, "targets": {"max_size_mb": 1}})
    res = run_recipe(tighter, run_dir, register=False, report=False)
    assert res.resumed_from == 1 and res.verdicts[0].status == "missed"
    # --fresh replaces the old run (only a run dir: anything else is refused)
    res = run_recipe(other, run_dir, resume=False, register=False, report=False)
    assert res.resumed_from == 0 and (run_dir / "run.json").exists()
    assert not list(tmp_path.glob(".run.discarded-*"))
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "keep.txt").write_text("mine")
    for resume in (None, False):
        with pytest.raises(ConfigError, match="not a run dir"):
            run_recipe(other, tmp_path / "notarun", resume=resume, register=False, report=False)
    assert (tmp_path / "notarun" / "keep.txt").read_text() == "mine"


SCRIPT = """
import sys, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
import helpers
from slimline.recipe import parse_recipe, run_recipe
run_recipe(parse_recipe({recipe!r}), {run_dir!r}, register=False, report=False)
"""


def test_resume_after_kill_equals_uninterrupted_run(tiny_dir, tmp_path, home):
    signal_file = tmp_path / "stage2.started"
    stages = [
        {"test.rtn": {"bits": 4}},
        {"test.rtn": {"bits": 3, "delay_s": 60, "signal": str(signal_file)}},
        {"test.rtn": {"bits": 2}},
    ]
    recipe = tiny_recipe(tiny_dir, stages, eval={"windows": 1, "seq_len": 32, "latency": None})
    run_dir = tmp_path / "killed"
    env = {**os.environ, "SLIMLINE_HOME": str(home), "SLIMLINE_QUIET": "1"}
    code = SCRIPT.format(here=str(HERE), recipe=recipe, run_dir=str(run_dir))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not signal_file.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "stage 2 never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # killed inside stage 2
    proc.wait()
    state = json.loads((run_dir / "run.json").read_text())
    assert [s["index"] for s in state["stages"]] == [1] and state["status"] == "running"
    assert not (run_dir / "stages" / "02-test.rtn").exists()  # nothing half-written
    # resume (automatic: same recipe digest) from the stage-1 checkpoint
    res = run_recipe(parse_recipe(recipe), run_dir, register=False, report=False)
    assert res.resumed_from == 1 and [s["index"] for s in res.stages] == [1, 2, 3]
    # the lineage goes on from the stage-1 checkpoint: stage 2's parent is stage 1
    man2 = json.loads((run_dir / res.stages[1]["checkpoint"] / "slimline.json").read_text())
    assert man2["parent"] == res.stages[0]["digest"]
    # an uninterrupted run of the same stages (signal already present: no delay)
    ref = run_recipe(parse_recipe(recipe), tmp_path / "straight", register=False, report=False)
    a, b = weights(res.artifact), weights(ref.artifact)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)  # bit-identical final model
