"""The metric math alone: ECE on constructed cases, KL/agreement, embedding cosine and recall."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slimline.eval import (
    CalibrationBins,
    expected_calibration_error,
    kl_per_token,
    mean_cosine,
    neighbour_recall,
    top1_agree,
)
from slimline.eval.metrics import shifted, token_nll


def test_ece_perfectly_calibrated_is_near_zero() -> None:
    g = torch.Generator().manual_seed(0)
    conf = torch.rand(200_000, generator=g) * 0.9 + 0.1
    correct = torch.rand(200_000, generator=g) < conf  # right exactly as often as it claims
    ece = expected_calibration_error(conf, correct)
    assert ece < 0.01  # measured 0.0022 (sampling noise only)


def test_ece_overconfident_is_large() -> None:
    g = torch.Generator().manual_seed(0)
    conf = torch.full((10_000,), 0.95)
    correct = torch.rand(10_000, generator=g) < 0.5  # claims 95 %, right half the time
    bins = CalibrationBins(15)
    bins.add(conf, correct)
    assert bins.ece() == pytest.approx(0.45, abs=0.02)  # measured 0.453
    assert bins.overconfidence() == pytest.approx(bins.ece())  # all of it is over-confidence


def test_ece_streaming_equals_one_shot_and_bin_edges() -> None:
    conf = torch.tensor([0.25, 0.5 + 1e-6, 1.0, 0.5])  # edges exact in binary
    correct = torch.tensor([1, 0, 1, 1])
    one = expected_calibration_error(conf, correct, n_bins=4)
    bins = CalibrationBins(4)
    for i in range(4):
        bins.add(conf[i : i + 1], correct[i : i + 1])
    assert bins.ece() == pytest.approx(one)
    # Bins are (lo, hi]: 0.25 -> bin 0, 0.5 -> bin 1, just above 0.5 -> bin 2, 1.0 -> bin 3.
    assert int((bins.count > 0).sum()) == 4
    assert math.isnan(CalibrationBins().ece())


def test_kl_and_agreement() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 9, 50, generator=g)
    ids = torch.randint(0, 50, (2, 9), generator=g)
    lp, targets = shifted(logits, ids)
    assert kl_per_token(lp, lp).abs().max() < 1e-6
    assert bool(top1_agree(lp, lp).all())
    other = F.log_softmax(logits[:, :-1] + 2.0 * torch.randn(2, 8, 50, generator=g), -1)
    kl = kl_per_token(lp, other)
    assert bool((kl > 0).all())
    # Matches torch's own KL(p || q) with p the reference.
    ref = F.kl_div(other, lp, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl, ref, atol=1e-5)
    assert float(top1_agree(lp, other).float().mean()) < 1.0
    assert torch.allclose(
        token_nll(lp, targets),
        F.cross_entropy(
            logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1), reduction="none"
        ).view(2, 8),
        atol=1e-5,
    )


def test_cosine_and_recall() -> None:
    g = torch.Generator().manual_seed(0)
    e = F.normalize(torch.randn(60, 16, generator=g), dim=-1)
    assert mean_cosine(e, e) == pytest.approx(1.0, abs=1e-6)
    assert neighbour_recall(e, e, 10) == 1.0
    # A rotation into a wider space keeps every cosine: neighbours are identical across widths.
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=g))
    wide = e @ q[:16]
    assert neighbour_recall(e, wide, 10) == pytest.approx(1.0)
    noisy = e + 0.5 * torch.randn(60, 16, generator=g)
    assert mean_cosine(e, noisy) < 0.99  # measured 0.436
    assert neighbour_recall(e, noisy, 10) < 1.0  # measured 0.263
    shuffled = e[torch.randperm(60, generator=g)]
    assert (
        neighbour_recall(e, shuffled, 10) < 0.4
    )  # unrelated ranking: measured 0.17 (chance 10/59)
    with pytest.raises(ValueError):
        neighbour_recall(e[:1], e[:1])
