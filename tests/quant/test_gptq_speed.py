"""GPTQ speed work (issue 15) changes no result: the clip search expands each candidate grid to
per-column form once instead of inside both quantize and dequantize; the scales and zeros it
picks are bit-identical to the previous loop's, on plain and engine grids, ragged groups too."""

from __future__ import annotations

import pytest
import torch

from slimline.quant import grid
from slimline.quant.grid import make_scheme


def _search_before(w, scheme, col_weight, steps=20, max_shrink=0.2):
    """The loop as it was before the change (quantize/dequantize expand the grid themselves)."""
    w = w.float()
    cw = col_weight.float().clamp(min=0)
    lo, hi = grid._group_reduce(w, scheme)
    best_s, best_z = grid.qparams_from_range(lo, hi, scheme)
    best_err = None
    gidx = grid.group_index(w.shape[1], scheme)
    for k in range(steps + 1):
        f = 1.0 - max_shrink * k / steps
        s, z = grid.qparams_from_range(lo * f, hi * f, scheme)
        err_cols = (w - grid.dequantize(grid.quantize(w, s, z, scheme), s, z, scheme)) ** 2 * cw
        err = torch.zeros_like(s).index_add_(1, gidx, err_cols)
        if scheme.super_block:
            kk = scheme.super_block // (scheme.group_size or 1)
            err = err.reshape(err.shape[0], -1, kk).sum(-1).repeat_interleave(kk, 1)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


@pytest.mark.parametrize(
    ("scheme", "in_f"),
    [
        (make_scheme(4, 64, True), 576),
        (make_scheme(4, 32, False), 256),
        (make_scheme(3, 32, True), 100),  # ragged last group
        (make_scheme(grid="gguf-q4_1"), 256),
        (make_scheme(grid="gguf-q4_k"), 512),  # super-blocks share one choice
    ],
    ids=lambda x: x.label() if hasattr(x, "label") else str(x),
)
def test_clip_search_unchanged(scheme, in_f):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, in_f, generator=g) * torch.rand(1, in_f, generator=g) * 3
    hd = torch.rand(in_f, generator=g) ** 4  # uneven column weights, like diag H
    s0, z0 = _search_before(w, scheme, hd)
    s1, z1 = grid.search_qparams(w, scheme, hd)
    assert torch.equal(s0, s1) and torch.equal(z0, z1)
    assert not torch.equal(s1, grid.qparams(w, scheme)[0])  # the search did pick clipped grids
