"""The inverse-Hessian factor GPTQ and SparseGPT solve with, in bounded memory.

Both methods sweep columns using the upper Cholesky factor of the dampened inverse of the layer
Hessian ``H = 2/n X^T X``. For an 8192-wide layer one ``[in, in]`` fp32 copy is 268 MB, and a
straightforward clone / permute / factor / invert chain holds five of them at once. This one
holds one beside the caller's ``H``: LAPACK factors and inverts in place, and torch lets it
when the output it is given is the input itself laid out column-major, so the permuted copy is
built transposed and every step writes over it. That is what lets a 1.5 B model's MLP down
projection be solved inside a 2 GB process.
"""

from __future__ import annotations

import torch

from slimline.errors import DataError

_ROWS = 512  # rows per chunk of the copies below: [in, 512] fp32 temporaries (16 MB at 8192)


def _permuted_colmajor(h: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``h[perm][:, perm]`` as a new column-major fp32 tensor (a transposed view of a row-major
    buffer holding its transpose), built a chunk of rows at a time: the one ``[in, in]`` copy."""
    buf = torch.empty(h.shape, dtype=torch.float32)
    for r in range(0, h.shape[0], _ROWS):
        buf[r : r + _ROWS] = h[:, perm[r : r + _ROWS]].T[:, perm]
    return buf.mT


def _transpose_(a: torch.Tensor) -> torch.Tensor:
    """A column-major square ``a`` made row-major in place, by swapping blocks across the
    diagonal (copies only: every value keeps its bits)."""
    buf, n = a.mT, a.shape[0]  # buf: the row-major storage, holding a^T
    for i in range(0, n, _ROWS):
        bi = slice(i, i + _ROWS)
        buf[bi, bi] = buf[bi, bi].T.clone()
        for j in range(i + _ROWS, n, _ROWS):
            bj = slice(j, j + _ROWS)
            upper = buf[bi, bj].clone()
            buf[bi, bj] = buf[bj, bi].T
            buf[bj, bi] = upper.T
    return buf


def inverse_hessian_factor(
    h: torch.Tensor,
    damp: float,
    *,
    perm: torch.Tensor | None = None,
    dead: torch.Tensor | None = None,
) -> torch.Tensor:
    """Upper Cholesky factor of ``(H' + damp*mean(diag H') I)^-1`` with ``H' = H[perm][:, perm]``
    (``perm``: activation order; default none) and the diagonal of ``dead`` inputs (default:
    zero diagonal) set to 1, dampening 10x more while it is not positive definite. ``h`` is only
    read. The numbers are, bit for bit, those of the out-of-place chain (``tests/calib``)."""
    perm = torch.arange(h.shape[0]) if perm is None else perm
    dead = torch.diag(h) == 0 if dead is None else dead
    info = torch.zeros((), dtype=torch.int32)

    def fresh(adds: list[float]) -> torch.Tensor:
        # the permuted copy, dead inputs set, and the dampening added in the order it was before
        # (a retry rebuilds it: the in-place factorization has overwritten it)
        a = _permuted_colmajor(h, perm)
        diag = a.diagonal()
        diag[dead[perm]] = 1
        for x in adds:
            diag += x
        return a

    a = fresh([])
    # the mean of a contiguous copy of the diagonal, not of the strided view: the reduction
    # then rounds as GPTQ's reference did, and the codes stay bit for bit what they were
    mean_diag = max(float(torch.diag(a).mean()), 1e-12)
    adds: list[float] = []
    added = 0.0
    for attempt in range(6):
        level = damp * (10**attempt) * mean_diag
        a.diagonal().add_(level - added)
        adds.append(level - added)
        added = level
        torch.linalg.cholesky_ex(a, out=(a, info))
        if int(info) == 0:
            torch.cholesky_inverse(a, out=a)
            torch.linalg.cholesky_ex(a, upper=True, out=(a, info))
            if int(info) == 0:
                return _transpose_(a)
            adds = [added]  # the inverse was not positive definite: damp more from H + added
        if attempt < 5:
            a = fresh(adds)
    raise DataError(
        "the calibration Hessian stays singular even after 100000x dampening",
        "use more (and more varied) calibration samples",
    )
