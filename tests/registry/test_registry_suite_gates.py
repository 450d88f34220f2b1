"""Promotion gates that name an evaluation suite: the suite's verdicts decide, from the metrics
the version's run recorded against the same reference or from a run of the suite now."""

from __future__ import annotations

import copy

import pytest
import torch
from typer.testing import CliRunner

import slimline.eval.suites as suites
from slimline.cli import app
from slimline.errors import ConfigError, RegistryError
from slimline.eval.cloze import Cloze
from slimline.eval.suites import SUITES, Suite
from slimline.eval.tail import Tail
from slimline.registry import Registry
from slimline.registry.gates import SuiteGate, parse_gate

TASKS = (
    Tail(datasets=("python-docs",), windows=1, seq_len=32),
    Cloze(sources=("python-docs",), n=4),
)
LOOSE = Suite("tiny-loose", TASKS, ("kl/p99/* <= 50", "flip/cloze-* <= 1"))
STRICT = Suite("tiny-strict", TASKS, ("kl/p99/* <= 0.0001", "flip/cloze-* <= 1"))


@pytest.fixture
def suites_run(monkeypatch):
    """The two test suites registered; every real run of a suite is counted."""
    monkeypatch.setitem(SUITES, LOOSE.name, LOOSE)
    monkeypatch.setitem(SUITES, STRICT.name, STRICT)
    calls: list[str] = []
    real = suites.run_suite

    def counting(*a, **kw):
        calls.append(kw["suite"])
        return real(*a, **kw)

    monkeypatch.setattr(suites, "run_suite", counting)
    return calls


@pytest.fixture
def lineage(tmp_path, monkeypatch):
    """A registry with base@1 (a tiny llama with a tokenizer) and its child model@1 (weights
    perturbed: its KL tail is well above 0), signed by the registry home's own key."""
    from slimline.artifact import save_artifact, signing_key
    from slimline.models import tiny_model

    home = tmp_path / "home"
    monkeypatch.setenv("SLIMLINE_HOME", str(home))
    key = signing_key(home)
    lm = tiny_model("llama", seed=0)
    base = save_artifact(lm.model, lm.tokenizer, tmp_path / "base", key=key)
    child_model = copy.deepcopy(lm.model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in child_model.model.layers.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))

    def child(path, manifest=None):
        return save_artifact(
            child_model, lm.tokenizer, tmp_path / path, key=key, parent=base.path,
            manifest=manifest or {},
        )  # fmt: skip

    reg = Registry(home)
    b = reg.register(base, "base")
    return reg, b, child


def test_suite_gate_lines_parse_and_refuse_bad_names(suites_run):
    assert parse_gate("suite tiny-loose") == SuiteGate("tiny-loose", "parent")
    assert str(parse_gate("suite tiny-loose vs baseline")) == "suite tiny-loose vs baseline"
    assert parse_gate("kl/p99/x <= 1").metric == "kl/p99/x"  # a plain gate is still a Gate
    with pytest.raises(ConfigError, match="unknown evaluation suite 'nope'"):
        parse_gate("suite nope")
    with pytest.raises(ConfigError, match="against parent or baseline"):
        parse_gate("suite tiny-loose vs current")


def test_promote_runs_the_suite_and_refuses_listing_failed_verdicts(lineage, suites_run):
    reg, base, child = lineage
    v = reg.register(child("child"), "model", parent=base.ref)
    blocked = reg.promote(v.ref, "prod", suite="tiny-strict")
    assert not blocked.promoted and suites_run == ["tiny-strict"]
    (fail,) = blocked.failures
    assert fail.metric == "kl/p99/python-docs" and fail.value > 0.0001
    assert fail.reference_ref == base.ref and "run now" in fail.detail
    assert reg.get(v.ref).aliases == []

    ok = reg.promote(v.ref, "prod", suite="tiny-loose")
    assert ok.promoted and ok.passed and suites_run == ["tiny-strict", "tiny-loose"]
    assert {r.metric for r in ok.results} == {"kl/p99/python-docs", "flip/cloze-python-docs"}
    assert reg.get("model@prod").ref == v.ref


def test_a_stored_suite_gate_line_applies_at_promotion(lineage, suites_run):
    reg, base, child = lineage
    v = reg.register(child("child", {"metrics": {"size/bytes": 1000}}), "model", parent=base.ref)
    assert reg.set_gates("prod", ["suite tiny-strict vs baseline", "size/bytes <= 1e12"]) == [
        "suite tiny-strict vs baseline",
        "size/bytes <= 1e+12",
    ]
    rep = reg.promote(v.ref, "prod")
    assert not rep.promoted
    assert [r.metric for r in rep.failures] == ["kl/p99/python-docs"]
    assert any(r.gate == "size/bytes <= 1e+12" and r.status == "pass" for r in rep.results)


def test_recorded_suite_is_reused_only_against_the_same_reference(lineage, suites_run):
    reg, base, child = lineage
    recorded = {
        "suite": "tiny-loose",
        "metrics": {"kl/p99/python-docs": 99.0, "flip/cloze-python-docs": 0.0},
        "reference": {},
        "reference_digest": base.digest,
    }
    v = reg.register(child("rec", {"suite": recorded}), "model", parent=base.ref)
    rep = reg.promote(v.ref, "prod", suite="tiny-loose")
    assert suites_run == []  # what the run recorded decides: 99 > 50 blocks it
    assert not rep.promoted and rep.failures[0].value == 99.0
    assert "recorded by its run" in rep.failures[0].detail

    other = dict(recorded, reference_digest="0" * 64)  # recorded against another model: re-run
    v2 = reg.register(child("rec2", {"suite": other}), "model", parent=base.ref)
    assert reg.promote(v2.ref, "prod", suite="tiny-loose").promoted
    assert suites_run == ["tiny-loose"]


def test_no_parent_skips_the_suite_gate(lineage, suites_run):
    reg, base, _ = lineage
    rep = reg.promote(base.ref, "prod", suite="tiny-strict")
    assert rep.promoted and rep.results[0].status == "skipped" and suites_run == []


def test_cli_promote_with_a_suite_exits_non_zero_and_names_the_failed_metric(lineage, suites_run):
    reg, base, child = lineage
    v = reg.register(child("child"), "model", parent=base.ref)
    r = CliRunner().invoke(app, ["registry", "promote", v.ref, "prod", "--suite", "tiny-strict"])
    assert isinstance(r.exception, RegistryError) and "blocked by 1 gate" in r.exception.problem
    assert "kl/p99/python-docs" in r.output and "FAIL" in r.output
    r = CliRunner().invoke(app, ["registry", "promote", v.ref, "prod", "--suite", "nope"])
    assert r.exit_code != 0 and isinstance(r.exception, ConfigError)
    assert "unknown evaluation suite 'nope'" in r.exception.problem
    assert suites_run == ["tiny-strict"]
