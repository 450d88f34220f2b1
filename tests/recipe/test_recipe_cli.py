"""The CLI is a thin layer: validate / list / show recipes, run one, errors with a fix."""

from __future__ import annotations

import json

import yaml
from helpers import tiny_recipe
from typer.testing import CliRunner

from slimline.cli import app

runner = CliRunner()


def test_recipe_list_and_show():
    res = runner.invoke(app, ["recipe", "list", "--json"])
    assert res.exit_code == 0, res.output
    names = {r["name"] for r in json.loads(res.stdout)}
    assert {"default", "int4-memory", "sparse24-int8-speed", "distill-prune-quant-3x"} <= names
    res = runner.invoke(app, ["recipe", "show", "default"])
    assert res.exit_code == 0 and yaml.safe_load(res.output)["model"] == "smollm2-135m"


def test_recipe_validate_ok_and_error(tiny_dir, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_recipe(tiny_dir, [{"test.rtn": {"bits": 4}}])))
    res = runner.invoke(app, ["recipe", "validate", str(good), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["ok"] and out["params"]["total"] == 3_219_776
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_recipe(tiny_dir, [{"quant.nope": {}}])))
    res = runner.invoke(app, ["recipe", "validate", str(bad)])
    assert res.exit_code != 0 and "unknown stage kind 'quant.nope'" in str(res.exception)


def test_run_command_prints_verdicts_and_report(tiny_dir, tmp_path, home):
    f = tmp_path / "r.yaml"
    rec = tiny_recipe(tiny_dir, [{"test.rtn": {"bits": 4}}], targets={"max_size_mb": 50})
    rec["eval"]["latency"] = None
    f.write_text(yaml.safe_dump(rec))
    res = runner.invoke(
        app, ["run", str(f), "-o", str(tmp_path / "run"), "--json", "--threads", "1"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["verdicts"][0]["status"] == "met" and out["registered"]["ref"] == "tiny@1"
    assert (tmp_path / "run" / "report.html").exists()
    # the same command again resumes the finished run: nothing re-run, same verdicts
    res = runner.invoke(
        app, ["run", str(f), "-o", str(tmp_path / "run"), "--json", "--no-register"]
    )
    assert json.loads(res.stdout)["resumed_stages"] == 1
