"""Low-rank factorisation of linear layers: plain SVD and activation-aware (whitened) SVD.

Plain SVD keeps the directions of largest weight energy. What matters is the layer's *output*
on real inputs, ||(W - W')X||: with H = X Xᵀ = L Lᵀ (Cholesky), the best rank-r W' is the
truncated SVD of W L, mapped back by L⁻¹ (SVD-LLM, Wang et al. 2024 — truncation-aware
whitening; ASVD, Yuan et al. 2023, is the diagonal special case). Pure math here; the glue that
gathers H on the calibration engine lives in ``apply.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimline.core import Codec, register_codec
from slimline.errors import ConfigError


def rank_for_ratio(out_features: int, in_features: int, ratio: float) -> int:
    """Rank whose two factors hold ``ratio`` of the dense layer's parameters."""
    return max(1, int(ratio * out_features * in_features / (out_features + in_features)))


def svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``B @ A ≈ w``: A is [rank, in], B is [out, rank] (Eckart–Young optimal)."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    return (root[:, None] * vh[:r]).to(w.dtype), (u[:, :r] * root).to(w.dtype)


def whitened_svd_factors(
    w: torch.Tensor, h: torch.Tensor, rank: int, damp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors minimising the output error on inputs whose Gram matrix is ``h``.

    ``h`` = Σ x xᵀ over calibration tokens ([in, in]). Damping adds ``damp`` x mean diagonal so
    the Cholesky exists when some input channels are dead.
    """
    hd = h.double()
    hd = hd + damp * hd.diagonal().mean().clamp(min=1e-8) * torch.eye(
        hd.shape[0], dtype=hd.dtype, device=hd.device
    )
    chol = torch.linalg.cholesky(hd)  # H = L Lᵀ
    u, s, vh = torch.linalg.svd(w.double() @ chol, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    # W ≈ U_r S_r V_rᵀ L⁻¹: solve A L = S_r^½ V_rᵀ instead of inverting L
    a = torch.linalg.solve_triangular(chol, root[:, None] * vh[:r], upper=False, left=False)
    return a.to(w.dtype), (u[:, :r] * root).to(w.dtype)


@register_codec
class LowRankLinear(nn.Module, Codec):
    """``y = B (A x) + bias``: a dense [out, in] layer stored as [out, r] and [r, in] factors."""

    codec = "lowrank.linear"

    def __init__(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.rank, self.in_features = a.shape
        self.out_features = b.shape[0]
        self.a = nn.Parameter(a.contiguous())
        self.b = nn.Parameter(b.contiguous())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(nn.functional.linear(x, self.a), self.b, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight these factors stand for (for evaluation and export)."""
        return self.b @ self.a

    def pack(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        t = {"a": self.a.data, "b": self.b.data}
        if self.bias is not None:
            t["bias"] = self.bias.data
        return t, {
            "rank": self.rank,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }

    @classmethod
    def unpack(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> LowRankLinear:
        return cls(tensors["a"], tensors["b"], tensors.get("bias"))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


def factorize(
    linear: nn.Linear, rank: int, h: torch.Tensor | None = None, damp: float = 0.01
) -> LowRankLinear:
    """Replace-ready low-rank version of ``linear`` (whitened when ``h`` is given)."""
    w = linear.weight.data
    if not 1 <= rank < min(w.shape):
        raise ConfigError(
            f"rank {rank} is outside 1..{min(w.shape) - 1} for a {tuple(w.shape)} layer",
            "choose a smaller rank or rank_ratio",
        )
    if not torch.isfinite(w).all():
        raise ConfigError(
            "the layer's weights contain NaN or inf", "repair the model before factorising it"
        )
    a, b = svd_factors(w, rank) if h is None else whitened_svd_factors(w, h, rank, damp)
    return LowRankLinear(a, b, linear.bias.data if linear.bias is not None else None)
