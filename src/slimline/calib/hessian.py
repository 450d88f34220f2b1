"""The inverse-Hessian factor GPTQ and SparseGPT solve with, in bounded memory.

Both methods sweep columns using the upper Cholesky factor of the dampened inverse of the layer
Hessian ``H = 2/n X^T X``. For an 8192-wide layer one ``[in, in]`` fp32 copy is 268 MB, and a
straightforward clone / permute / factor / invert chain holds five of them at once; this one
holds at most two beside the caller's ``H``, which is what lets a 1.5 B model's MLP down
projection be solved inside a 2 GB process.
"""

from __future__ import annotations

import torch

from slimline.errors import DataError


def _permuted(h: torch.Tensor, perm: torch.Tensor, rows: int = 512) -> torch.Tensor:
    """``h[perm][:, perm]`` as a new fp32 tensor, built a row chunk at a time: one ``[in, in]``
    copy at the peak instead of two (8192-wide layers: 268 MB each)."""
    out = torch.empty(h.shape, dtype=torch.float32)
    for r in range(0, h.shape[0], rows):
        out[r : r + rows] = h[perm[r : r + rows]][:, perm]
    return out


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
    read; each intermediate is freed as soon as the next exists, so at most two ``[in, in]`` fp32
    tensors live beside it."""
    perm = torch.arange(h.shape[0]) if perm is None else perm
    dead = torch.diag(h) == 0 if dead is None else dead
    hp = _permuted(h, perm)
    diag = hp.diagonal()
    diag[dead[perm]] = 1
    # the mean of a contiguous copy of the diagonal, not of the strided view: the reduction
    # then rounds as GPTQ's reference did, and the codes stay bit for bit what they were
    mean_diag = max(float(torch.diag(hp).mean()), 1e-12)
    added = 0.0
    for attempt in range(6):
        level = damp * (10**attempt) * mean_diag
        diag += level - added
        added = level
        chol, info = torch.linalg.cholesky_ex(hp)
        if int(info) == 0:
            del hp, diag
            hinv = torch.cholesky_inverse(chol)
            del chol
            up, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0:
                return up
            hp = _permuted(h, perm)  # the inverse was not positive definite: damp more
            diag = hp.diagonal()
            diag[dead[perm]] = 1
            diag += added
    raise DataError(
        "the calibration Hessian stays singular even after 100000x dampening",
        "use more (and more varied) calibration samples",
    )
