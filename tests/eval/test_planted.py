"""Planted failures: compressions that each break one known thing, and the default suite's
gates flag each through the metric made for it, while a healthy 8-bit model passes them all.

On the first 2 blocks of real SmolLM2 (fast; a weak LM, so the suite is sized down through
``overrides`` but its tasks and gates are the default suite's). The reference's answers are
computed once and shared through ``memo``.
"""

from __future__ import annotations

import eval_planted as planted
import pytest

from slimline.eval import TorchEngine, run_suite

SMALL = {
    "tail": {"windows": 1, "seq_len": 256},
    "domain": {"windows": 1, "seq_len": 256},
    "cloze": {"n": 4},
    "lambada": {"n": 4},
    "noise": {"n": 1},
    "longctx": {"lengths": (256, 1024), "n": 2},
    "capability": {"n": 1},
}


@pytest.fixture(scope="module")
def judge(smollm2_2blocks):
    ref = TorchEngine(smollm2_2blocks)
    memo: dict = {}
    return lambda m: run_suite(m, reference=ref, overrides=SMALL, memo=memo)


def _failed(report) -> set[str]:
    return {v["metric"] for v in report.failed()}


def test_healthy_int8_passes_every_gate(judge, smollm2_2blocks) -> None:
    r = judge(planted.int8(smollm2_2blocks))
    assert r.verdicts and r.passed, r.failed()
    assert r.metrics["flip/top1/python-docs"] < 0.05  # measured 0.008


def test_kv2_cache_fails_long_context_while_short_ppl_stays(judge, smollm2_2blocks) -> None:
    r = judge(planted.kv_cache(smollm2_2blocks, bits=2))
    assert "flip/longctx/1024" in _failed(r)
    # one 256-token chunk is never read back from the cache: nothing changes at short context
    assert r.metrics["flip/longctx/256"] == 0.0
    assert r.metrics["ppl/python-docs"] == pytest.approx(r.reference["ppl/python-docs"], rel=1e-4)


def test_zeroed_mlp_flagged_by_kl_tail_and_top1_flips(judge, smollm2_2blocks) -> None:
    failed = _failed(judge(planted.mlp_zeroed(smollm2_2blocks, block=1)))
    assert {"kl/p99/python-docs", "flip/top1/python-docs"} <= failed


def test_sharpened_logits_flagged_by_overconfidence_at_same_accuracy(
    judge, smollm2_2blocks
) -> None:
    r = judge(planted.sharpened(smollm2_2blocks, temperature=0.5))
    assert {"overconfidence", "ece"} <= _failed(r)
    assert r.metrics["flip/top1"] == 0.0  # greedy choices unchanged: accuracy is the same
    assert r.metrics["acc/cloze-python-docs"] == r.reference["acc/cloze-python-docs"]


def test_shifted_domain_damage_flagged_by_shift_ratio(judge, smollm2_2blocks) -> None:
    r = judge(planted.shifted_domain_damage(smollm2_2blocks))
    assert "shift/shakespeare" in _failed(r)
    assert "ppl/python-docs" not in _failed(r)  # the home domain barely moves (measured 1.02x)
