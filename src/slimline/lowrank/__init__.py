"""Low-rank factorisation (SVD, activation-aware SVD) and LoRA adapters."""

from slimline.lowrank.apply import Asvd, Svd, apply_asvd, apply_svd
from slimline.lowrank.factor import (
    LowRankLinear,
    factorize,
    rank_for_ratio,
    svd_factors,
    whitened_svd_factors,
)
from slimline.lowrank.lora import attach_lora, load_adapter, merge_lora, save_adapter

__all__ = [
    "Asvd",
    "LowRankLinear",
    "Svd",
    "apply_asvd",
    "apply_svd",
    "attach_lora",
    "factorize",
    "load_adapter",
    "merge_lora",
    "rank_for_ratio",
    "save_adapter",
    "svd_factors",
    "whitened_svd_factors",
]
