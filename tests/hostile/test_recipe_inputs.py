"""Issue 16, items 11 and 14: `slimline recipe validate` refuses, with one error line naming the
line, a YAML alias bomb (before walking it) and every recipe that would fail or could not be
judged: unknown datasets, targets on metrics it never measures, a model that is truncated,
pickle-only or has no tokenizer."""

from __future__ import annotations

import shutil
import time

import pytest
import yaml
from hostile_util import tree


@pytest.fixture
def saved(tiny_llama_dir):
    """The session's tiny llama (tied embeddings) saved by transformers; tests copy it before
    changing anything."""
    return tiny_llama_dir


def recipe(model, **over) -> dict:
    r = {
        "name": "hostile",
        "model": str(model),
        "data": {"calibration": {"n": 2, "seq_len": 32}},
        "stages": [{"quant.rtn": {"bits": 8}}],
        "eval": {"datasets": ["python-docs"], "windows": 1, "seq_len": 32, "latency": None},
    }
    r.update(over)
    return r


def validate(cli, tmp_path, rec, *extra):
    f = tmp_path / "r.yaml"
    f.write_text(rec if isinstance(rec, str) else yaml.safe_dump(rec, sort_keys=False))
    before = tree(tmp_path)
    res = cli("recipe", "validate", f, *extra)
    assert tree(tmp_path) == before
    return res


# --- 11. YAML alias bomb -----------------------------------------------------------------------

# "Billion laughs", kept to 9**6 leaves so a regression costs seconds, not the machine; the
# issue's file (9 levels) grew memory by ~2 GB in 30 s on the old loader.
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, c in zip("abcde", "bcdef", strict=True)
)


def test_alias_bomb_is_refused_before_it_is_walked(cli, tmp_path):
    t0 = time.perf_counter()
    res = validate(cli, tmp_path, "name: bomb\nmodel: smollm2-135m\n" + BOMB)
    assert time.perf_counter() - t0 < 5  # refused while composing, before any walk
    assert res.code == 2, res.err
    line = res.error_line()
    assert "r.yaml:4: YAML alias *a refused" in line


def test_merge_keys_are_aliases_too(cli, tmp_path):
    text = "name: x\nmodel: m\nbase: &b {bits: 4}\nstages:\n  - quant.rtn: {<<: *b}\n"
    res = validate(cli, tmp_path, text, "--no-model")
    assert res.code == 2 and "YAML alias *b refused" in res.error_line()


# --- 14. recipes that would fail or could not be judged -------------------------------------------


@pytest.mark.parametrize(
    "over, expect",
    [
        (
            {"data": {"calibration": {"source": "no-such-corpus", "n": 2, "seq_len": 32}}},
            ":5: data.calibration: data source 'no-such-corpus' not found",
        ),
        (
            {
                "eval": {
                    "datasets": ["python-docs", "nope.txt"],
                    "windows": 1,
                    "seq_len": 32,
                    "latency": None,
                }
            },
            "eval.datasets: data source 'nope.txt' not found",
        ),
        (
            {"targets": {"max_quality_loss": {"ppl/shakespeare": 1.1}}},
            "target on ppl/shakespeare, which this recipe never measures",
        ),
        (
            {
                "targets": {"max_quality_loss": {"kl/teacher": 1.1}},
                "eval": {"metrics": ["ppl"], "windows": 1, "seq_len": 32, "latency": None},
            },
            "target on kl/teacher, which this recipe never measures",
        ),
        ({"targets": {"max_prefill_ms": 100}}, "targets.max_prefill_ms needs latency"),
        ({"targets": {"max_memory_mb": 900}}, "targets.max_memory_mb needs the memory profile"),
    ],
    ids=[
        "calib-source",
        "eval-dataset",
        "ppl-other-dataset",
        "kl-not-evaluated",
        "latency-off",
        "memory-off",
    ],
)
def test_recipes_that_cannot_run_or_be_judged_are_refused(cli, saved, tmp_path, over, expect):
    rec = recipe(saved, **over)
    for extra in ((), ("--no-model",)):
        res = validate(cli, tmp_path, rec, *extra)
        assert res.code == 2, res.err
        assert expect in res.error_line()


def test_a_measured_target_still_validates(cli, saved, tmp_path):
    rec = recipe(saved, targets={"max_quality_loss": {"ppl/python-docs": 1.1}, "max_size_mb": 50})
    rec["eval"]["metrics"] = ["ppl"]
    res = validate(cli, tmp_path, rec)
    assert res.code == 0, res.err


def _truncated(d):
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _pickle_only(d):
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")


def _no_tokenizer(d):
    for f in d.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            f.unlink()


@pytest.mark.parametrize(
    "break_it, expect",
    [
        (_truncated, "does not load"),
        (_pickle_only, "holds only pickle weights"),
        (_no_tokenizer, "has no tokenizer"),
    ],
    ids=["truncated", "pickle-only", "no-tokenizer"],
)
def test_a_model_that_cannot_be_used_fails_validation(cli, saved, tmp_path, break_it, expect):
    d = tmp_path / "m"
    shutil.copytree(saved, d)
    break_it(d)
    res = validate(cli, tmp_path, recipe(d))
    assert res.code == 2, res.err
    line = res.error_line()
    assert "r.yaml:2: model" in line and expect in line
