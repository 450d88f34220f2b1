"""SparseGPT: prune a layer and update its surviving weights to undo the damage (pure math).

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot". With H = 2 X Xᵀ the Hessian of the layer's squared output error, removing weight w_q
costs w_q² / [H⁻¹]_qq (Optimal Brain Surgeon) and the optimal fix to the remaining weights of its
row is -w_q / [H⁻¹]_qq · H⁻¹_{:,q}. Columns are processed left to right; the inverse Hessian of
the not-yet-processed columns is read off one upper Cholesky factor of H⁻¹, and updates are
applied lazily: inside a block of columns immediately, to the columns right of the block once
per block (the GPTQ trick that makes it fast). The mask is chosen adaptively per block of
columns (unstructured) or per group of M columns (N:M), using the updated weights.
"""

from __future__ import annotations

import torch

from slimline.calib.hessian import inverse_hessian_factor
from slimline.errors import ConfigError
from slimline.prune.masks import check_nm_width, check_sparsity


def hessian(inputs: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """H = 2/n Σ x xᵀ over every token of ``inputs`` (float64 accumulation, returned float32)."""
    xs = inputs if isinstance(inputs, list) else [inputs]
    H, n = None, 0
    for x in xs:
        x2 = x.reshape(-1, x.shape[-1]).double()
        H = x2.T @ x2 if H is None else H + x2.T @ x2
        n += x2.shape[0]
    if H is None:
        raise ConfigError("no inputs to build a Hessian from", "run calibration data first")
    return (2.0 * H / n).float()


class HessianAccumulator:
    """Running H = 2/n Σ x xᵀ fed one batch at a time (so activations need not be kept)."""

    def __init__(self, in_features: int):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.n = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).double().cpu()
        self.H += x2.T @ x2
        self.n += x2.shape[0]

    def get(self) -> torch.Tensor:
        if not self.n:
            raise ConfigError("no activations reached this layer", "check the calibration data")
        return (2.0 * self.H / self.n).float()


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    H: torch.Tensor,
    *,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(new_weight, mask)`` for a ``[out, in]`` weight and its ``[in, in]`` Hessian.

    ``sparsity`` prunes exactly ``round(sparsity * out * width)`` weights in every column block;
    ``nm=(n, m)`` keeps n of every m inputs per row instead. ``damp`` is the fraction of the mean
    Hessian diagonal added for stability (1% as in the paper).
    """
    if weight.ndim != 2 or H.shape != (weight.shape[1], weight.shape[1]):
        raise ConfigError(
            f"weight {tuple(weight.shape)} and Hessian {tuple(H.shape)} do not fit",
            "build H from this layer's inputs: shape [in_features, in_features]",
        )
    if nm is not None:
        n, m = nm
        if not 0 < n < m:
            raise ConfigError(f"N:M needs 0 < N < M, got {n}:{m}", "use e.g. 2:4")
        check_nm_width(weight.shape[1], m)
        if blocksize % m:
            blocksize = (blocksize // m + 1) * m
    else:
        check_sparsity(sparsity)
    dtype = weight.dtype
    # float32 like the reference implementation: float64 was ~3x slower on CPU for no accuracy
    # that shows in the output error.
    W = weight.detach().float().clone()
    H = H.float()  # only read: the factor sets dead inputs' diagonal in its own copy
    # Inputs that never fire carry no information: prune them for free and keep H invertible.
    dead = torch.diag(H) == 0
    W[:, dead] = 0.0
    mask = torch.ones_like(W, dtype=torch.bool)
    # The per-column updates are tiny ops: thread hand-offs cost more than they save (measured
    # 1.8 s at 1 thread vs 39 s at 2 on a contended 2-core VM for a 576x1536 layer, and
    # cholesky_inverse 0.26 s vs 3.0 s), so the sweep runs single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        U = inverse_hessian_factor(H, damp, dead=dead)
        _sweep_columns(W, U, mask, sparsity, nm, blocksize)
    finally:
        torch.set_num_threads(threads)
    mask &= ~dead.reshape(1, -1)
    W *= mask
    return W.to(dtype), mask


def _sweep_columns(
    W: torch.Tensor,
    U: torch.Tensor,
    mask: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None,
    blocksize: int,
) -> None:
    """The OBS column sweep of SparseGPT, in place on ``W`` and ``mask``."""
    cols = W.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        keep1 = torch.ones_like(W1, dtype=torch.bool)
        if nm is None:
            # OBS saliency w² / [H⁻¹]_qq; with the Cholesky factor, [H⁻¹]_qq of the remaining
            # columns is d_q² (the paper's adaptive per-block mask selection).
            sal = (W1**2 / d.reshape(1, -1) ** 2).flatten()
            k = round(sparsity * sal.numel())
            if k:
                keep1.view(-1)[torch.topk(sal, k, largest=False).indices] = False
        for i in range(count):
            if nm is not None and i % nm[1] == 0:
                sal = W1[:, i : i + nm[1]] ** 2 / d[i : i + nm[1]].reshape(1, -1) ** 2
                drop = torch.topk(sal, nm[1] - nm[0], dim=1, largest=False).indices
                keep1[:, i : i + nm[1]].scatter_(1, drop, False)
            w = W1[:, i]
            q = torch.where(keep1[:, i], w, torch.zeros_like(w))
            err = (w - q) / d[i]
            # Lazy update: fix the columns left in this block now ...
            W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        mask[:, i1:i2] = keep1
        # ... and everything right of the block in one matrix product.
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]


def output_error(weight: torch.Tensor, new_weight: torch.Tensor, H: torch.Tensor) -> float:
    """Relative squared output error tr((W-W')H(W-W')ᵀ) / tr(W H Wᵀ) on the data H came from."""
    D = (weight - new_weight).double()
    Wd = weight.double()
    Hd = H.double()
    num = torch.einsum("ij,jk,ik->", D, Hd, D)
    den = torch.einsum("ij,jk,ik->", Wd, Hd, Wd)
    return float(num / den.clamp(min=1e-30))
