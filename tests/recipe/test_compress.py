"""One pipeline: the compress commands are recipes run by the recipe runner, so their output is
the artifact a `slimline run` of the same stages writes; a shipped technique killed after its
checkpoint resumes to the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from slimline.artifact import load_artifact
from slimline.cli import app
from slimline.recipe import parse_recipe, run_recipe
from slimline.recipe import runner as runner_mod

VOLATILE = {"seconds"}  # a stage's own timing, inside its record's details


def _strip(v):
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in v.items() if k not in VOLATILE}
    if isinstance(v, list):
        return [_strip(x) for x in v]
    return v


def _trace(stages: list[dict]) -> list[dict]:
    """A stage trace without what moves between runs of the same work: times, memory, and the
    checkpoints' digests and sizes (their manifests hold the times)."""
    keep = ("index", "kind", "config", "record", "checkpoint")
    return [_strip({k: s[k] for k in keep}) for s in stages]


def _manifest(d: Path) -> dict:
    return json.loads((d / "slimline.json").read_text())


def test_cli_quantize_writes_what_a_run_of_the_same_stage_writes(tiny_dir, tmp_path, home):
    out = tmp_path / "q4"
    r = CliRunner().invoke(
        app,
        ["quantize", str(tiny_dir), "--method", "gptq", "--bits", "4", "--group-size", "32",
         "--calib-samples", "8", "--seq-len", "64", "-o", str(out), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    # the command's run dir is a slimline run dir: run.json, stage trace, report, registry
    run_dir = Path(res["run_dir"])
    state = json.loads((run_dir / "run.json").read_text())
    assert state["format"] == "slimline-run" and state["status"] == "finished"
    assert [s["kind"] for s in state["stages"]] == ["quant.gptq"]
    assert (run_dir / "report.html").exists() and res["registered"] == "quantize-gptq@1"
    assert Path(state["artifact"]) == out.resolve() and run_dir.is_relative_to(home)

    # `slimline run` of the recipe the command ran (it is saved in the run dir)
    recipe = parse_recipe(state["recipe"])
    ref = run_recipe(recipe, tmp_path / "run", register=False, report=False)
    a, b = _manifest(out), _manifest(ref.artifact)
    assert a.keys() == b.keys() and a["format"] == b["format"] == "slimline-artifact"
    assert a["modules"] == b["modules"]  # every compressed module: same codec, meta, keys
    assert _trace(a["stages"]) == _trace(b["stages"])  # same trace, same typed records
    assert {k: v for k, v in a["files"].items() if k != "tokenizer_config.json"} == {
        k: v for k, v in b["files"].items() if k != "tokenizer_config.json"
    }  # same files, same bytes
    rec = a["stages"][0]["record"]
    assert rec["bytes_after"] < rec["bytes_before"] and len(rec["modules"]) == 14
    assert {m["type_after"] for m in rec["modules"].values()} == {"QuantLinear"}
    model, _, _ = load_artifact(out)
    assert type(model.model.layers[0].mlp.up_proj).__name__ == "QuantLinear"


def test_shipped_stages_killed_after_the_first_checkpoint_resume_to_the_same_bytes(
    tiny_dir, tmp_path, home, monkeypatch
):
    recipe = parse_recipe(
        {
            "name": "kill",
            "model": str(tiny_dir),
            "data": {"calibration": {"n": 2, "seq_len": 32}},
            "stages": [
                {"prune.wanda": {"sparsity": 0.5}},
                {"quant.rtn": {"bits": 4, "group_size": 32}},
            ],
            "eval": {"datasets": ["python-docs"], "windows": 1, "seq_len": 32, "latency": None},
        }
    )

    def killed(index: int) -> None:
        if index == 0:
            raise KeyboardInterrupt("killed after stage 1's checkpoint")

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(runner_mod, "_after_stage", killed)
        run_recipe(recipe, tmp_path / "killed", register=False, report=False)
    state = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert [s["kind"] for s in state["stages"]] == ["prune.wanda"]
    assert state["status"] == "running" and not (tmp_path / "killed" / "artifact").exists()

    res = run_recipe(recipe, tmp_path / "killed", register=False, report=False)
    assert res.resumed_from == 1 and [s["index"] for s in res.stages] == [1, 2]
    ref = run_recipe(recipe, tmp_path / "straight", register=False, report=False)
    a = (res.artifact / "model.safetensors").read_bytes()
    b = (ref.artifact / "model.safetensors").read_bytes()
    assert a == b  # the same bytes
    assert (
        load_file(res.artifact / "model.safetensors").keys()
        == load_file(ref.artifact / "model.safetensors").keys()
    )
    assert _trace(res.stages) == _trace(ref.stages)


def test_the_run_dir_is_checked_and_the_data_built_before_anything_is_written(
    tiny_dir, tmp_path, home
):
    from slimline.errors import DataError

    bad = parse_recipe(
        {
            "name": "bad",
            "model": str(tiny_dir),
            "data": {"calibration": {"source": str(tmp_path / "none.txt"), "n": 2, "seq_len": 32}},
            "stages": [{"prune.wanda": {"sparsity": 0.5}}],
        }
    )
    with pytest.raises(DataError):
        run_recipe(bad, tmp_path / "run", register=False, report=False)
    assert not (tmp_path / "run").exists()
