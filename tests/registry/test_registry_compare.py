"""A/B compare: direction from the metric name, verdicts within tolerance, sources of metrics."""

from __future__ import annotations

import math

import pytest
import torch

from slimline.registry import compare, direction, judge


@pytest.mark.parametrize(
    "metric, want",
    [
        ("ppl/python-docs", "lower"),
        ("kl/teacher", "lower"),
        ("latency/prefill_ms", "lower"),
        ("latency/decode_tok_s", "higher"),
        ("size/bytes", "lower"),
        ("memory/peak_mb", "lower"),
        ("ece", "lower"),
        ("agree/top1", "higher"),
        ("acc/boolq", "higher"),
        ("cos/teacher", "higher"),
        ("recall@10/teacher", "higher"),
        ("passkey/4096", "higher"),
        ("params/nonzero", "lower"),
        ("mystery", None),
    ],
)
def test_direction_from_metric_name(metric, want):
    assert direction(metric) == want


def test_verdicts_on_constructed_metrics():
    a = {
        "ppl/python-docs": 12.8,
        "latency/decode_tok_s": 50.0,
        "agree/top1": 0.90,
        "size/bytes": 5e8,
        "ece": 0.05,
        "acc/x": 0.5,
        "kl/teacher": 0.1,
    }
    b = {
        "ppl/python-docs": 13.5,
        "latency/decode_tok_s": 70.0,
        "agree/top1": 0.903,
        "size/bytes": 1.7e8,
        "ece": 0.08,
        "cos/teacher": 0.99,
        "kl/teacher": math.inf,
    }
    c = compare("unused-a", "unused-b", metrics_a=a, metrics_b=b)
    v = {r.metric: r.verdict for r in c.rows}
    assert v == {
        "ppl/python-docs": "worse",  # 13.5 > 12.8, lower is better
        "latency/decode_tok_s": "better",  # 70 > 50 tok/s
        "agree/top1": "same",  # 0.33% apart, within 1%
        "size/bytes": "better",
        "ece": "worse",
        "acc/x": "only in a",
        "cos/teacher": "only in b",
        "kl/teacher": "worse",  # inf kl
    }
    assert c.verdict == "mixed"
    row = next(r for r in c.rows if r.metric == "size/bytes")
    assert row.ratio == pytest.approx(0.34) and row.delta == pytest.approx(-3.3e8)
    # A tighter tolerance turns "same" into a real difference.
    assert judge("agree/top1", 0.90, 0.903, tolerance=0.001).verdict == "better"


def test_compare_registry_refs_and_paths(reg, lineage_artifacts):
    reg.register(lineage_artifacts["base"].path, "tiny")
    reg.register(lineage_artifacts["child"].path, "tiny")
    c = compare("tiny@1", "tiny@2", registry=reg)
    assert {r.metric: r.verdict for r in c.rows} == {
        "ppl/python-docs": "worse",
        "size/bytes": "better",
    }
    assert c.digest_a == lineage_artifacts["base"].digest
    # The same from artifact paths (manifest metrics), no registry needed.
    p = compare(lineage_artifacts["base"].path, lineage_artifacts["child"].path)
    assert [(r.a, r.b) for r in p.rows] == [(r.a, r.b) for r in c.rows]


def test_run_measures_both_models_on_the_same_data(home, lineage_artifacts):
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))
    seen = []

    def run(lm):
        seen.append(lm.source)
        with torch.no_grad():
            loss = lm.model(input_ids=ids, labels=ids).loss
        return {"ppl/random": math.exp(loss.item())}

    c = compare(lineage_artifacts["base"].path, lineage_artifacts["child"].path, run=run)
    assert c.measured and len(seen) == 2
    row = next(r for r in c.rows if r.metric == "ppl/random")
    # Same weights in both artifacts: identical perplexities (measured 128.31, about the vocab
    # size 128, as a random model should score).
    assert row.a == row.b and row.verdict == "same" and 100 < row.a < 160
