"""A recipe's ``eval.suite``: run once on the final model against the baseline, its metrics and
verdicts kept with the final results, a failed gate a missed target, names checked at load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import tiny_recipe

import slimline.eval
from slimline.errors import ConfigError
from slimline.eval.cloze import Calibration, Cloze
from slimline.eval.suites import SUITES, Suite
from slimline.eval.tail import Tail
from slimline.recipe import load_recipe, run_recipe
from slimline.recipe.schema import parse_recipe, shipped_recipes

# A suite small enough for a tiny model in seconds: KL tail on one short window, a few cloze
# items and their calibration (which draws the reliability diagram).
TINY = Suite(
    "tiny-test",
    (
        Tail(datasets=("python-docs",), windows=1, seq_len=32),
        Cloze(sources=("python-docs",), n=4),
        Calibration(),
    ),
    ("kl/p99/* <= 50", "flip/cloze-* <= 1", "ece <= reference + 1"),
)


@pytest.fixture
def tiny_suite(monkeypatch):
    monkeypatch.setitem(SUITES, TINY.name, TINY)
    calls = []
    real = slimline.eval.run_suite

    def counting(*a, **kw):
        calls.append(kw.get("suite"))
        return real(*a, **kw)

    monkeypatch.setattr(slimline.eval, "run_suite", counting)
    return calls


def _recipe(tiny_dir: Path, gates: list[str] | None = None, stages: int = 2) -> dict:
    rec = tiny_recipe(tiny_dir, [{"test.rtn": {"bits": 8}}] * stages)
    rec["eval"]["latency"] = None
    rec["eval"]["suite"] = TINY.name
    if gates:
        rec["eval"]["gates"] = gates
    return rec


def test_suite_runs_once_on_the_final_model_and_its_failed_gate_is_a_missed_target(
    tiny_dir, home, tmp_path, tiny_suite
):
    gates = ["kl/p99/* <= 0", "flip/top1/* <= 1", "passkey/512 >= 0"]
    res = run_recipe(parse_recipe(_recipe(tiny_dir, gates)), tmp_path / "run", registry_home=home)
    assert tiny_suite == ["tiny-test"]  # once, after the last of two stages
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    s = state["suite"]
    assert s["model_digest"] == state["stages"][-1]["digest"]
    assert s["reference_digest"] == state["baseline"]["digest"]
    # its metrics sit with the final model's, not with the first stage's
    assert "kl/p99/python-docs" in state["stages"][-1]["metrics"]
    assert "kl/p99/python-docs" not in state["stages"][0]["metrics"]
    assert "acc/cloze-python-docs" in state["baseline"]["metrics"]  # the reference's value
    # 8-bit RTN moves the logits a little: a KL tail of exactly 0 is a missed target
    by = {v.target: v for v in res.verdicts}
    assert by["suite[tiny-test]"].status == "met"  # the suite's own, loose gates
    assert by["suite[tiny-test] gate 'kl/p99/* <= 0'"].status == "missed"
    assert by["suite[tiny-test] gate 'flip/top1/* <= 1'"].status == "met"
    assert by["suite[tiny-test] gate 'passkey/512 >= 0'"].status == "not measured"
    assert not res.all_met
    assert [v["status"] for v in state["verdicts"]][-3:] == ["missed", "met", "not measured"]
    # the artifact carries the suite for the registry's promotion gates
    man = json.loads((res.artifact / "slimline.json").read_text())
    assert man["suite"]["suite"] == "tiny-test" and man["metrics"]["kl/p99/python-docs"] > 0
    assert s["figures"] == ["suite/reliability-cloze.png"]
    assert (tmp_path / "run" / s["figures"][0]).stat().st_size > 1000

    # the same recipe again: the finished run's suite is reused, not re-run
    run_recipe(parse_recipe(_recipe(tiny_dir, gates)), tmp_path / "run", registry_home=home)
    assert tiny_suite == ["tiny-test"]


def test_a_failed_suite_gate_fails_the_suite_target(tiny_dir, home, tmp_path, monkeypatch):
    strict = Suite(TINY.name, TINY.tasks, ("kl/p99/* <= 0",))
    monkeypatch.setitem(SUITES, strict.name, strict)
    res = run_recipe(
        parse_recipe(_recipe(tiny_dir, stages=1)), tmp_path / "run", registry_home=home
    )
    (v,) = [v for v in res.verdicts if v.target == "suite[tiny-test]"]
    assert v.status == "missed" and "0/1 gates passed" in v.text and "kl/p99/python-docs" in v.text
    assert not res.all_met


@pytest.mark.parametrize(
    ("eval_over", "message"),
    [
        ({"suite": "nope"}, "unknown evaluation suite 'nope'"),
        ({"suite": "default", "gates": ["bogus/thing <= 1"]}, "unknown metric 'bogus/thing'"),
        ({"suite": "default", "gates": ["kl/p99/* <= parent"]}, "cannot read gate"),
        ({"gates": ["kl/p99/* <= 1"]}, "set eval.suite"),
    ],
)
def test_bad_suite_or_gate_is_refused_at_load_before_any_work(
    tiny_dir, tmp_path, eval_over, message
):
    rec = tiny_recipe(tiny_dir, [{"test.rtn": {"bits": 8}}])
    rec["eval"].update(eval_over)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(rec))
    with pytest.raises(ConfigError, match=message) as e:
        run_recipe(path, tmp_path / "run")
    assert f"{path}:" in e.value.problem  # names the file and line
    assert not (tmp_path / "run").exists()


def test_a_recipe_without_a_suite_keeps_its_digest_shape(tiny_dir):
    plain = parse_recipe(tiny_recipe(tiny_dir, [{"test.rtn": {}}]))
    assert "suite" not in plain.to_dict()["eval"] and "gates" not in plain.to_dict()["eval"]
    with_suite = tiny_recipe(tiny_dir, [{"test.rtn": {}}])
    with_suite["eval"]["suite"] = "default"
    assert parse_recipe(with_suite).work_digest() != plain.work_digest()


def test_a_shipped_recipe_runs_the_default_suite():
    shipped = shipped_recipes()
    assert load_recipe(shipped["int4-memory"], check=False).eval.suite == "default"
    # the main recipe is being reworked: no suite yet
    assert load_recipe(shipped["default"], check=False).eval.suite is None


def test_a_suite_that_judged_nothing_is_not_measured_never_met():
    from slimline.recipe.targets import suite_verdicts

    rec = {"suite": "encoder", "verdicts": [], "skipped": ["retrieval: judges encoder models"]}
    (v,) = suite_verdicts(rec)
    assert v.status == "not measured" and "judges encoder models" in v.text
