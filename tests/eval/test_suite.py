"""Suites, gates, tasks and the engine interface on tiny models: what each promises, and the
bad-input messages (window too short, empty task set, no tokenizer, unknown names)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from slimline.cli import app
from slimline.errors import ConfigError
from slimline.eval import Gate, TorchEngine, check_gates, run_suite
from slimline.eval.cloze import Cloze, Lambada, cloze_items, lambada_items
from slimline.eval.encoder import spearman
from slimline.eval.noise import KINDS, perturb
from slimline.metrics import direction
from slimline.models import tiny_model

SMALL = {
    "tail": {"windows": 1, "seq_len": 64},
    "domain": {"windows": 1, "seq_len": 64},
    "longctx": {"lengths": (256, 4096), "n": 1},
}


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def test_gates_absolute_relative_glob_and_nan() -> None:
    m = {"kl/p99/a": 0.2, "kl/p99/b": 0.9, "acc/x": 0.5, "ppl/a": float("nan")}
    ref = {"acc/x": 0.7, "ppl/a": 10.0}
    v, _ = check_gates(
        ["kl/p99/* <= 0.5", "acc/x >= reference - 0.1", "ppl/a <= 1.1 x reference"], m, ref
    )
    by = {x["metric"]: x for x in v}
    assert by["kl/p99/a"]["passed"] and not by["kl/p99/b"]["passed"]
    assert by["acc/x"]["limit"] == pytest.approx(0.6) and not by["acc/x"]["passed"]
    assert by["ppl/a"]["limit"] == pytest.approx(11.0) and not by["ppl/a"]["passed"]  # NaN fails
    assert str(Gate.parse("acc/x >= reference - 0.1")) == "acc/x >= reference - 0.1"
    with pytest.raises(ConfigError, match="cannot read gate"):
        Gate.parse("acc/x about 3")
    with pytest.raises(ConfigError, match="names no metric"):
        check_gates(["flip/nothing <= 1"], m, ref, strict_names=True)


def test_new_metric_names_have_directions() -> None:
    for name in ("flip/top1", "kl/p99/python-docs", "shift/shakespeare", "noise/typos",
                 "overconfidence/cloze", "ece/cloze", "flip/longctx/768"):  # fmt: skip
        assert direction(name) == "lower", name
    for name in ("acc/cloze-shakespeare", "passkey/2048", "consistency/1024", "spearman/teacher"):
        assert direction(name) == "higher", name
    assert direction("stderr/acc/cloze-python-docs") is None


def test_items_are_seeded_deterministic_and_well_formed() -> None:
    cfg = Cloze(n=20)
    a, b = cloze_items("shakespeare", cfg, 20), cloze_items("shakespeare", cfg, 20)
    assert a == b and len(a) == 20
    assert all(len(set(it.choices)) == 4 and 0 <= it.answer < 4 for it in a)
    assert cloze_items("shakespeare", Cloze(seed=1), 20) != a
    lam = lambada_items("python-docs", Lambada(), 20)
    for it in lam:  # the last word already occurred in the passage
        assert it.choices[0].strip().lower() in it.context.lower()


def test_engine_batches_equal_single_windows_and_kv_chunks(llama) -> None:
    e = TorchEngine(llama, batch_tokens=4096)
    g = torch.Generator().manual_seed(0)
    ws = [torch.randint(0, 1000, (n,), generator=g) for n in (40, 17, 33)]
    batched = e.logits(ws)
    for w, lg in zip(ws, batched, strict=True):
        (one,) = e.logits([w])
        assert lg.shape == (w.numel(), one.shape[-1])
        assert torch.allclose(lg, one, atol=1e-4)  # right padding never leaks backwards
    q = TorchEngine(llama, kv_bits=8, chunk=16)
    (lq,) = q.logits([ws[0]])
    assert torch.allclose(lq[:16], batched[0][:16], atol=1e-4)  # first chunk is exact
    assert (lq[16:] - batched[0][16:]).abs().max() > 0  # later chunks read the int8 cache
    assert e.generate(ws[1], 5).numel() <= 5


def test_noise_perturbs_each_kind_deterministically() -> None:
    import random

    text = "Hello World, this is a Sentence: with some punctuation; and words.\nNext line here."
    for kind in KINDS:
        a = perturb(text, kind, 0.5, random.Random(0))
        assert a != text and a == perturb(text, kind, 0.5, random.Random(0)), kind


def test_spearman() -> None:
    x = torch.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


def test_suite_on_tiny_model_reports_skips_and_figure(llama, tmp_path) -> None:
    r = run_suite(llama, reference=llama, overrides=SMALL, limit=2, figures_dir=tmp_path)
    assert r.metrics["kl/teacher"] == pytest.approx(0.0, abs=1e-6)
    assert r.metrics["flip/cloze-python-docs"] == 0.0 and r.metrics["shift/shakespeare"] == 1.0
    # the tiny model's window is 1024 tokens: 4096 is skipped, with the reason stated
    assert "passkey/4096" not in r.metrics and "passkey/256" in r.metrics
    assert any("passkey/4096" in s and "window of 1024" in s for s in r.skipped)
    assert any(s.startswith("retrieval: judges encoder") for s in r.skipped)
    assert r.passed, r.failed()  # the model is its own reference
    (png,) = r.figures
    assert png.endswith("reliability-cloze.png") and Path(png).read_bytes()[:4] == b"\x89PNG"
    assert all(math.isfinite(v) for v in r.metrics.values())


def test_bad_input_messages(llama) -> None:
    with pytest.raises(ConfigError, match="unknown evaluation suite 'nope'") as e:
        run_suite(llama, suite="nope")
    assert "default" in e.value.fix
    with pytest.raises(ConfigError, match="has no tasks") as e:
        run_suite(llama, tasks=[])
    assert "tail" in e.value.fix
    with pytest.raises(ConfigError, match="unknown evaluation task 'foo'"):
        run_suite(llama, tasks=["foo"])
    with pytest.raises(ConfigError, match="unknown metric 'bogus/x'"):
        run_suite(llama, tasks=["tail"], gates=["bogus/x <= 1"])
    with pytest.raises(ConfigError, match="has no tokenizer") as e:
        run_suite(dataclasses.replace(llama, tokenizer=None), tasks=["tail"])
    assert "tokenizer" in e.value.fix


def test_encoder_retrieval_agreement(minilm) -> None:
    r = run_suite(minilm, reference=minilm, tasks=[{"name": "retrieval", "n": 24}])
    assert r.metrics["recall@10/teacher"] == 1.0
    assert r.metrics["spearman/teacher"] == pytest.approx(1.0)
    assert r.passed


def test_cli_suite_json_verdicts_and_strict(tiny_llama_dir) -> None:
    base = ["eval", str(tiny_llama_dir), "--reference", str(tiny_llama_dir), "--windows", "1",
            "--seq-len", "64", "--limit", "2", "--threads", "1", "--task", "tail",
            "--task", "cloze"]  # fmt: skip
    r = CliRunner().invoke(app, [*base, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["metrics"]["flip/cloze-python-docs"] == 0.0
    assert {"metric", "value", "limit", "passed"} <= set(d["verdicts"][0])
    r = CliRunner().invoke(app, [*base, "--strict", "--gate", "ppl/python-docs <= 1"])
    assert r.exit_code == 1 and "gates failed: ppl/python-docs" in r.output
    r = CliRunner().invoke(app, [*base, "--suite", "nope"])
    assert (
        isinstance(r.exception, ConfigError) and "unknown evaluation suite" in r.exception.problem
    )
