"""`slimline eval`: JSON metrics with a reference, and errors with their exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from slimline.cli import app
from slimline.errors import ConfigError, DataError


@pytest.fixture
def tiny_dir(tiny_llama_dir):
    return tiny_llama_dir


def test_eval_json_with_reference(tiny_dir) -> None:
    args = [
        "eval",
        str(tiny_dir),
        "--data",
        "python-docs",
        "--data",
        "shakespeare",
        "--reference",
        str(tiny_dir),
        "--windows",
        "1",
        "--seq-len",
        "32",
        "--threads",
        "1",
        "--limit",  # the default suite's other tasks, at 2 items each: fast
        "2",
        "--json",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)["metrics"]
    assert m["ppl/python-docs"] > 1 and m["ppl/shakespeare"] > 1
    assert m["kl/teacher"] == pytest.approx(0.0, abs=1e-6) and m["agree/top1"] == 1.0
    assert json.loads(r.stdout)["passed"] is True  # a model is never failed against itself
    r = CliRunner().invoke(
        app, ["eval", str(tiny_dir), "--windows", "1", "--seq-len", "32", "--suite", "ppl"]
    )
    assert r.exit_code == 0 and "ppl/python-docs" in r.output


def test_eval_errors(tiny_dir, tmp_path) -> None:
    r = CliRunner().invoke(app, ["eval", str(tiny_dir), "--windows", "0"])
    assert isinstance(r.exception, ConfigError) and r.exception.exit_code == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    r = CliRunner().invoke(app, ["eval", str(tiny_dir), "--data", str(empty)])
    assert isinstance(r.exception, DataError) and "empty" in r.exception.problem
