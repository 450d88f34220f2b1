"""Masks: exact sparsity, N:M patterns, and pruned weights that stay zero through training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimline.errors import ConfigError
from slimline.prune import apply_mask, is_nm, keep_masks, nm_mask, remove_masks, topk_mask
from slimline.prune.importance import magnitude, rank
from slimline.prune.masks import global_masks, parse_pattern


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.875])
def test_unstructured_mask_prunes_exactly_the_asked_fraction(sparsity):
    torch.manual_seed(0)
    score = torch.randn(48, 64).abs()
    mask = topk_mask(score, sparsity)
    assert int((~mask).sum()) == round(sparsity * score.numel())
    # the pruned entries are the smallest ones
    if sparsity:
        assert score[~mask].max() <= score[mask].min()


def test_row_mask_prunes_the_same_count_in_every_row():
    score = torch.rand(16, 40)
    mask = topk_mask(score, 0.25, per_row=True)
    assert ((~mask).sum(1) == 10).all()


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_mask_keeps_n_of_every_m_along_the_input(pattern):
    n, m = parse_pattern(pattern)
    torch.manual_seed(1)
    w = torch.randn(32, 64)
    mask = nm_mask(w.abs(), n, m)
    groups = mask.reshape(32, 64 // m, m).sum(-1)
    assert (groups == n).all()
    assert is_nm(w * mask, n, m)
    assert not is_nm(w, n, m)


def test_global_ranking_prunes_weak_layers_more():
    scores = {"a": torch.full((10, 10), 1.0) + torch.rand(10, 10) * 0.1, "b": torch.rand(10, 10)}
    masks = global_masks(scores, 0.5)
    assert int((~masks["a"]).sum()) + int((~masks["b"]).sum()) == 100
    assert int((~masks["b"]).sum()) == 100  # every weak score goes first


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_is_refused(bad):
    with pytest.raises(ConfigError):
        topk_mask(torch.rand(4, 4), bad)


@pytest.mark.parametrize("bad", ["4:4", "5:4", "0:4", "2-4", "a:b"])
def test_bad_nm_patterns_are_refused(bad):
    with pytest.raises(ConfigError):
        parse_pattern(bad)


def test_nm_needs_a_width_divisible_by_m():
    with pytest.raises(ConfigError, match="not divisible"):
        nm_mask(torch.rand(4, 10), 2, 4)


def test_mask_holds_after_real_adamw_steps():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    mask = rank({"w": magnitude(lin.weight)}, sparsity=0.5)["w"]
    apply_mask(lin, mask)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, weight_decay=0.1)
    keep_masks(opt, lin)
    before = lin.weight.detach().clone()
    for _ in range(3):
        loss = lin(torch.randn(8, 32)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (lin.weight[~mask] == 0).all()  # exactly zero, not merely small
    assert not torch.equal(lin.weight[mask], before[mask])  # the kept weights did train


def test_mask_holds_even_with_momentum_from_before_pruning():
    # Adam state built up before pruning would move pruned weights; the post-step hook stops it.
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        lin(torch.randn(4, 16)).sum().backward()
        opt.step()
    mask = topk_mask(lin.weight.abs(), 0.5)
    apply_mask(lin, mask)
    keep_masks(opt, lin)
    opt.zero_grad()
    lin(torch.randn(4, 16)).sum().backward()
    assert (lin.weight.grad[~mask] == 0).all()  # the gradient hook masks gradients
    opt.step()
    assert (lin.weight[~mask] == 0).all()


def test_remove_masks_keeps_zeros_and_frees_the_layer():
    lin = nn.Linear(8, 8)
    apply_mask(lin, topk_mask(lin.weight.abs(), 0.5))
    assert remove_masks(lin) == 1
    assert int((lin.weight == 0).sum()) == 32
    assert "weight_mask" not in dict(lin.named_buffers())
