"""Curriculum: present easy samples first (Bengio et al. 2009), easy as the teacher sees it.

Difficulty is the teacher's mean next-token entropy on a sample (low entropy = the teacher is
sure, the pattern is learnable) or the sample's length in real tokens. The order feeds the
trainer's first epoch; later epochs are shuffled as usual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimline.errors import ConfigError

__all__ = ["curriculum_order", "curriculum_weights", "difficulty"]


@torch.no_grad()
def difficulty(
    teacher: nn.Module | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    by: str = "entropy",
    batch_size: int = 4,
) -> torch.Tensor:
    """One difficulty score per sample (higher = harder)."""
    if by == "length":
        if attention_mask is None:
            return torch.full((input_ids.shape[0],), float(input_ids.shape[1]))
        return attention_mask.sum(1).float()
    if by != "entropy":
        raise ConfigError(f"unknown curriculum {by!r}", "use 'entropy' or 'length'")
    if teacher is None:
        raise ConfigError("an entropy curriculum needs a live teacher", "pass the teacher model")
    out = []
    for i in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[i : i + batch_size]
        m = None if attention_mask is None else attention_mask[i : i + batch_size]
        logits = teacher(input_ids=ids, attention_mask=m).logits.float()
        logp = F.log_softmax(logits, dim=-1)
        ent = -(logp.exp() * logp).sum(-1)  # [B, T]
        w = torch.ones_like(ent) if m is None else m.float()
        out.append((ent * w).sum(1) / w.sum(1).clamp(min=1))
    return torch.cat(out)


def curriculum_order(scores: torch.Tensor) -> torch.Tensor:
    """Sample indices from easiest to hardest (stable for ties)."""
    return torch.argsort(scores, stable=True)


def curriculum_weights(scores: torch.Tensor, progress: float, floor: float = 0.1) -> torch.Tensor:
    """Per-sample loss weights at training ``progress`` in [0, 1]: easy samples count fully from
    the start, hard ones fade in (weight ``floor`` at progress 0, 1 once progress passes their
    difficulty quantile) — a soft version of competence-based curricula (Platanios et al. 2019)."""
    if not 0.0 <= progress <= 1.0:
        raise ConfigError(f"progress must be in [0, 1] (got {progress})", "pass step / max_steps")
    rank = torch.argsort(torch.argsort(scores, stable=True), stable=True).float()
    quantile = rank / max(len(scores) - 1, 1)
    return torch.where(
        quantile <= progress, torch.ones_like(quantile), torch.full_like(quantile, floor)
    )
