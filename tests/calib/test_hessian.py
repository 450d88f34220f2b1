"""The shared inverse-Hessian factor (GPTQ, SparseGPT): the same numbers as the textbook chain
(clone, set dead inputs, permute, dampen, Cholesky, invert, Cholesky) while holding fewer
copies, including when it must dampen more than once."""

from __future__ import annotations

import pytest
import torch

from slimline.calib.hessian import inverse_hessian_factor
from slimline.errors import DataError


def _textbook(h: torch.Tensor, damp: float, perm: torch.Tensor) -> torch.Tensor:
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h = h[perm][:, perm]
    idx = torch.arange(h.shape[0])
    mean = float(torch.diag(h).mean())
    for attempt in range(6):
        hd = h.clone()
        hd[idx, idx] += damp * (10**attempt) * mean
        chol, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            up, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
            if int(info) == 0:
                return up
    raise AssertionError("singular")


def _hessian(n: int, tokens: int, dead: list[int]) -> torch.Tensor:
    x = torch.randn(tokens, n, generator=torch.Generator().manual_seed(n))
    x[:, dead] = 0
    return 2 / tokens * x.T @ x


@pytest.mark.parametrize("actorder", [True, False])
def test_factor_equals_the_textbook_chain(actorder):
    h = _hessian(600, 2000, dead=[3, 599])  # > one 512-row chunk of the permuted copy
    perm = torch.argsort(torch.diag(h), descending=True) if actorder else torch.arange(600)
    ours = inverse_hessian_factor(h, 0.01, perm=perm)
    assert torch.equal(ours, _textbook(h, 0.01, perm))
    assert torch.equal(h, _hessian(600, 2000, dead=[3, 599]))  # the caller's H is only read


def test_factor_reads_the_triangle_the_textbook_chain_reads():
    # a summed H is symmetric only up to rounding: the in-place factor, which works on a
    # column-major copy, must still read the lower triangle of H[perm][:, perm] as LAPACK did
    h = _hessian(600, 2000, dead=[])
    h = h + torch.triu(torch.full_like(h, 1e-3), diagonal=1)  # upper triangle off by 1e-3
    perm = torch.argsort(torch.diag(h), descending=True)
    ours = inverse_hessian_factor(h, 0.01, perm=perm)
    assert ours.is_contiguous()
    assert torch.equal(ours, _textbook(h, 0.01, perm))


def test_indefinite_hessian_is_dampened_until_it_factors():
    # half the mean diagonal taken off every eigenvalue: indefinite until the dampening reaches
    # the mean diagonal (the third level, 100x the first), in the textbook chain and in ours
    h = _hessian(40, 400, dead=[]).double()
    lam_min, mean = float(torch.linalg.eigvalsh(h)[0]), float(torch.diag(h).mean())
    shifted_mean = (mean - lam_min) / 1.5  # smallest eigenvalue after the shift: -shifted_mean/2
    h = (h - (lam_min + shifted_mean / 2) * torch.eye(40)).float()
    eye = torch.eye(40)
    assert int(torch.linalg.cholesky_ex(h + 0.1 * float(torch.diag(h).mean()) * eye)[1]) != 0
    perm = torch.arange(40)
    ours = inverse_hessian_factor(h, 0.01, perm=perm)
    torch.testing.assert_close(ours, _textbook(h, 0.01, perm), rtol=1e-4, atol=1e-5)


def test_a_hessian_nothing_factors_is_refused():
    h = torch.full((4, 4), float("nan"))
    with pytest.raises(DataError, match="singular"):
        inverse_hessian_factor(h, 0.01)
