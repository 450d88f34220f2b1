"""Gate specs parse, print back, and decide with the numbers shown."""

from __future__ import annotations

import math

import pytest

from slimline.errors import ConfigError
from slimline.registry import Gate, evaluate_gates


@pytest.mark.parametrize(
    "spec, parsed",
    [
        (
            "ppl/python-docs <= 1.05 x parent",
            Gate("ppl/python-docs", "<=", ref="parent", factor=1.05),
        ),
        ("size/bytes <= 6e7", Gate("size/bytes", "<=", absolute=6e7)),
        (
            "latency/decode_tok_s >= 0.95 * current",
            Gate("latency/decode_tok_s", ">=", ref="current", factor=0.95),
        ),
        ("kl/teacher <= baseline + 0.02", Gate("kl/teacher", "<=", ref="baseline", offset=0.02)),
        ("agree/top1 >= parent - 0.01", Gate("agree/top1", ">=", ref="parent", offset=-0.01)),
        ("acc/boolq > parent", Gate("acc/boolq", ">", ref="parent")),
    ],
)
def test_parse_and_round_trip(spec, parsed):
    g = Gate.parse(spec)
    assert g == parsed
    assert Gate.parse(str(g)) == g
    assert (
        Gate.parse(
            {
                "metric": g.metric,
                "op": g.op,
                "ref": g.ref,
                "factor": g.factor,
                "offset": g.offset,
                "absolute": g.absolute,
            }
        )
        == g
    )


@pytest.mark.parametrize(
    "spec", ["ppl <= ", "ppl => 3", "ppl <= 2 x grandparent", "<= 3", "ppl <= parent x 2"]
)
def test_bad_specs_raise_config_error(spec):
    with pytest.raises(ConfigError):
        Gate.parse(spec)


def test_evaluate_reports_numbers_and_decisions():
    gates = [
        Gate.parse(s)
        for s in (
            "ppl/a <= 1.05 x parent",
            "size/bytes <= 100",
            "agree/top1 >= current - 0.01",
            "ece <= baseline",
        )
    ]
    refs = {
        "parent": ("m@1", {"ppl/a": 10.0}),
        "current": ("m@2", {"agree/top1": 0.9}),
        "baseline": None,
    }
    res = evaluate_gates(
        gates, {"ppl/a": 10.6, "size/bytes": 90, "agree/top1": 0.895, "ece": 0.1}, refs
    )
    assert [r.status for r in res] == ["fail", "pass", "pass", "skipped"]
    assert (
        res[0].threshold == pytest.approx(10.5)
        and res[0].value == 10.6
        and res[0].reference_ref == "m@1"
    )
    assert res[2].threshold == pytest.approx(0.89)


def test_missing_or_non_finite_values_fail():
    g = [Gate.parse("ppl/a <= 1.1 x parent")]
    assert evaluate_gates(g, {}, {"parent": ("m@1", {"ppl/a": 10.0})})[0].status == "fail"
    assert evaluate_gates(g, {"ppl/a": 9.0}, {"parent": ("m@1", {})})[0].status == "fail"
    assert (
        evaluate_gates(g, {"ppl/a": "inf"}, {"parent": ("m@1", {"ppl/a": 10.0})})[0].status
        == "fail"
    )
    assert (
        evaluate_gates(g, {"ppl/a": math.nan}, {"parent": ("m@1", {"ppl/a": 10.0})})[0].status
        == "fail"
    )
