"""Pruning: remove what does little work.

- one-shot unstructured / N:M: ``prune.magnitude``, ``prune.wanda``, ``prune.sparsegpt``
- structured with physical removal: ``prune.heads``, ``prune.mlp``, ``prune.blocks``
- importance scores, masks that hold during training, sensitivity analysis, gradual schedules,
  and ``SparseLinear`` (bitmask + non-zeros) so an artifact's size reflects its sparsity.

``prune(model, config, data=calib_ids)`` is the one verb.
"""

from __future__ import annotations

from typing import Any

import torch

from slimline.core import Context, StageRecord, TechniqueConfig, apply_technique
from slimline.prune.importance import InputStats, activation_stats, magnitude, rank, taylor, wanda
from slimline.prune.masks import (
    apply_mask,
    get_mask,
    is_nm,
    keep_masks,
    nm_mask,
    reapply_masks,
    remove_masks,
    sparsity_of,
    topk_mask,
)
from slimline.prune.oneshot import Magnitude, PruneConfig, SparseGpt, Wanda
from slimline.prune.schedule import PruningSchedule, sparsity_at
from slimline.prune.sensitivity import allocate, owl_allocation, sensitivity_sweep
from slimline.prune.sparse import SparseLinear, to_dense, to_sparse
from slimline.prune.sparsegpt import hessian, output_error, sparsegpt_prune
from slimline.prune.structured import (
    PruneBlocks,
    PruneHeads,
    PruneMlp,
    rank_blocks,
    remove_blocks,
    remove_heads,
    remove_mlp_channels,
    replay,
)


def prune(
    model: Any,
    config: TechniqueConfig,
    data: torch.Tensor | None = None,
    ctx: Context | None = None,
) -> StageRecord:
    """Apply one pruning technique in place (``model`` may be a LoadedModel) and return its record."""
    ctx = ctx or Context()
    if data is not None:
        ctx.calib = data
    if ctx.tokenizer is None and hasattr(model, "tokenizer"):
        ctx.tokenizer = model.tokenizer
    target = (
        model.model if hasattr(model, "model") and not isinstance(model, torch.nn.Module) else model
    )
    return apply_technique(target, config, ctx)


__all__ = [
    "InputStats",
    "Magnitude",
    "PruneBlocks",
    "PruneConfig",
    "PruneHeads",
    "PruneMlp",
    "PruningSchedule",
    "SparseGpt",
    "SparseLinear",
    "Wanda",
    "activation_stats",
    "allocate",
    "apply_mask",
    "get_mask",
    "hessian",
    "is_nm",
    "keep_masks",
    "magnitude",
    "nm_mask",
    "output_error",
    "owl_allocation",
    "prune",
    "rank",
    "rank_blocks",
    "reapply_masks",
    "remove_blocks",
    "remove_heads",
    "remove_masks",
    "remove_mlp_channels",
    "replay",
    "sensitivity_sweep",
    "sparsegpt_prune",
    "sparsity_at",
    "sparsity_of",
    "taylor",
    "to_dense",
    "to_sparse",
    "topk_mask",
    "wanda",
]
