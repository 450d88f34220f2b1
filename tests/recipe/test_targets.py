"""Target verdicts on constructed measurements: met, missed, not measured, relative quality."""

from __future__ import annotations

import pytest

from slimline.errors import ConfigError
from slimline.recipe import Targets, check_targets
from slimline.recipe.targets import quality_verdict

SETUP = {"engine": "torch", "threads": 2}
BASE = {"ppl/python-docs": 12.0, "agree/top1": 1.0, "acc/qa": 0.60, "size/bytes": 500e6}


def by_target(verdicts):
    return {v.target: v for v in verdicts}


def test_met_and_missed_with_numbers():
    t = Targets(
        max_size_mb=200,
        max_prefill_ms={"value": 1000, "engine": "torch", "threads": 2},
        min_decode_tok_s=20,
        max_memory_mb=800,
    )
    final = {
        "size/bytes": 170.5e6,
        "latency/prefill_ms": 1250.0,
        "latency/decode_tok_s": 21.0,
        "memory/peak_mb": 900.0,
        "latency/setup": SETUP,
    }
    v = by_target(check_targets(t, final, BASE))
    assert v["max_size_mb"].status == "met" and v["max_size_mb"].value == pytest.approx(170.5)
    assert v["max_prefill_ms"].status == "missed" and "1250" in v["max_prefill_ms"].text
    assert v["min_decode_tok_s"].status == "met"
    assert v["max_memory_mb"].status == "missed" and v["max_memory_mb"].limit == 800


def test_not_measured_never_passes():
    t = Targets(max_size_mb=200, max_memory_mb=100, max_quality_loss={"ppl/shakespeare": 1.2})
    v = by_target(check_targets(t, {"ppl/shakespeare": 40.0}, BASE))
    assert v["max_size_mb"].status == "not measured" and not v["max_size_mb"].met
    assert v["max_memory_mb"].status == "not measured"
    # quality without a baseline value cannot be judged either
    q = v["max_quality_loss[ppl/shakespeare]"]
    assert q.status == "not measured" and "baseline" in q.text


def test_latency_on_another_engine_is_not_measured():
    t = Targets(
        max_prefill_ms={"value": 1000, "engine": "onnxruntime", "threads": 2},
        min_decode_tok_s={"value": 5, "threads": 4},
    )
    final = {"latency/prefill_ms": 10.0, "latency/decode_tok_s": 100.0, "latency/setup": SETUP}
    v = by_target(check_targets(t, final, BASE))
    assert (
        v["max_prefill_ms"].status == "not measured" and "onnxruntime" in v["max_prefill_ms"].text
    )
    assert (
        v["min_decode_tok_s"].status == "not measured" and "4 threads" in v["min_decode_tok_s"].text
    )


def test_relative_quality_ratio_and_delta():
    # lower is better: ratio 1.10 on 12.0 -> limit 13.2
    v = quality_verdict("ppl/python-docs", 1.10, {"ppl/python-docs": 13.1}, BASE)
    assert v.status == "met" and v.limit == pytest.approx(13.2)
    v = quality_verdict("ppl/python-docs", 1.10, {"ppl/python-docs": 13.3}, BASE)
    assert v.status == "missed" and "1.108 x baseline" in v.text
    # delta on lower-is-better: 12.0 + 0.5
    assert (
        quality_verdict("ppl/python-docs", "+0.5", {"ppl/python-docs": 12.6}, BASE).status
        == "missed"
    )
    # higher is better: a ratio 1.25 means at least baseline / 1.25; a delta "-0.05" means >= 0.55
    v = quality_verdict("agree/top1", 1.25, {"agree/top1": 0.81}, BASE)
    assert v.status == "met" and v.limit == pytest.approx(0.8)
    assert quality_verdict("acc/qa", "-0.05", {"acc/qa": 0.54}, BASE).status == "missed"
    assert quality_verdict("acc/qa", "-0.05", {"acc/qa": 0.56}, BASE).status == "met"


def test_quality_limits_are_validated():
    with pytest.raises(ValueError, match="beat the baseline"):
        Targets(max_quality_loss={"ppl/python-docs": 0.8})
    with pytest.raises(ValueError, match="unknown metric"):
        Targets(max_quality_loss={"throughput": 1.1})
    with pytest.raises(ConfigError, match="unknown metric"):
        quality_verdict("throughput", 1.1, {}, BASE)
