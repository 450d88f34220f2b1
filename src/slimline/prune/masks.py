"""Pruning masks: which weights survive, and keeping the pruned ones at exactly zero.

A mask is a bool tensor shaped like the weight (True = kept). Unstructured masks keep the
highest-scoring fraction of a tensor (or of each row, as Wanda compares within an output row);
N:M masks keep the N best of every M consecutive weights along the input dimension, the pattern
sparse tensor cores accelerate (2:4). A mask is stored on its layer as the ``weight_mask`` buffer
and enforced by a gradient hook (pruned weights get no gradient) plus ``keep_masks`` re-applying
it after every optimizer step, so later fine-tuning or distillation cannot revive them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimline.errors import ConfigError

MASK = "weight_mask"


def check_sparsity(sparsity: float) -> float:
    """Validate a sparsity fraction: it must lie in [0, 1) (1 would delete the layer)."""
    if not isinstance(sparsity, int | float) or not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(
            f"sparsity must be in [0, 1), got {sparsity!r}",
            "pass the fraction of weights to remove, e.g. 0.5 for half",
        )
    return float(sparsity)


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``: keep N of every M weights; N must be below M."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not m:
        raise ConfigError(f"N:M pattern {pattern!r} is not of the form 'N:M'", "use e.g. '2:4'")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        raise ConfigError(
            f"N:M pattern {pattern!r} needs 0 < N < M (keep N of every M weights)",
            "use e.g. '2:4' or '4:8'",
        )
    return n, mm


def check_nm_width(in_features: int, m: int, name: str = "layer") -> None:
    if in_features % m:
        raise ConfigError(
            f"{name} has {in_features} input features, not divisible by M={m} of the N:M pattern",
            f"leave {name} out with `ignore`, or use an M that divides {in_features}",
        )


def topk_mask(score: torch.Tensor, sparsity: float, *, per_row: bool = False) -> torch.Tensor:
    """Keep the highest scores: exactly ``round(sparsity * n)`` entries are pruned (per row if asked)."""
    check_sparsity(sparsity)
    s = score.float()
    if per_row:
        rows = s.reshape(s.shape[0], -1)
        k = round(sparsity * rows.shape[1])
        mask = torch.ones_like(rows, dtype=torch.bool)
        if k:
            idx = torch.topk(rows, k, dim=1, largest=False).indices
            mask.scatter_(1, idx, False)
        return mask.reshape(score.shape)
    flat = s.flatten()
    k = round(sparsity * flat.numel())
    mask = torch.ones_like(flat, dtype=torch.bool)
    if k:
        mask[torch.topk(flat, k, largest=False).indices] = False
    return mask.reshape(score.shape)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive inputs of each row."""
    if not 0 < n < m:
        raise ConfigError(f"N:M needs 0 < N < M, got {n}:{m}", "use e.g. 2:4")
    out_f, in_f = score.shape
    check_nm_width(in_f, m)
    groups = score.float().reshape(out_f, in_f // m, m)
    keep = torch.topk(groups, n, dim=2).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, keep, True)
    return mask.reshape(out_f, in_f)


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold over all layers (global ranking): layers with weak scores lose more."""
    check_sparsity(sparsity)
    flat = torch.cat([s.float().flatten() for s in scores.values()])
    k = round(sparsity * flat.numel())
    if k == 0:
        return {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    # Exact count even with ties: rank every entry and prune the k lowest.
    order = torch.argsort(flat, stable=True)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[:k]] = False
    out, i = {}, 0
    for n, s in scores.items():
        out[n] = keep[i : i + s.numel()].reshape(s.shape)
        i += s.numel()
    return out


# --- masks on layers ---------------------------------------------------------------------------


def _grad_hook(mask: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * mask.to(grad.dtype)

    return hook


def apply_mask(linear: nn.Module, mask: torch.Tensor) -> None:
    """Zero the pruned weights of ``linear`` and keep them zero in later training.

    The mask is stored as the non-persistent buffer ``weight_mask`` (a plain ``save_pretrained``
    stays loadable by transformers; ``SparseLinear`` stores it in artifacts); a gradient hook
    masks the weight's gradient. Applying a new mask replaces the old one.
    """
    w = linear.weight
    if tuple(mask.shape) != tuple(w.shape):
        raise ConfigError(
            f"mask shape {tuple(mask.shape)} does not match weight {tuple(w.shape)}",
            "build the mask from this layer's weight",
        )
    mask = mask.to(device=w.device, dtype=torch.bool)
    old = getattr(linear, "_slimline_mask_hook", None)
    if old is not None:
        old.remove()
    linear.register_buffer(MASK, mask, persistent=False)
    with torch.no_grad():
        w.mul_(mask.to(w.dtype))
    linear._slimline_mask_hook = w.register_hook(_grad_hook(mask))  # type: ignore[assignment]


def get_mask(linear: nn.Module) -> torch.Tensor | None:
    return getattr(linear, MASK, None) if MASK in getattr(linear, "_buffers", {}) else None


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if get_mask(m) is not None}


@torch.no_grad()
def reapply_masks(model: nn.Module) -> int:
    """Multiply every masked weight by its mask again; returns how many layers were touched."""
    mods = masked_modules(model)
    for m in mods.values():
        m.weight.mul_(m.weight_mask.to(m.weight.dtype))
    return len(mods)


def remove_masks(model: nn.Module) -> int:
    """Drop masks and hooks (the zeros stay): the model trains freely again."""
    mods = masked_modules(model)
    for m in mods.values():
        hook = getattr(m, "_slimline_mask_hook", None)
        if hook is not None:
            hook.remove()
            del m._slimline_mask_hook
        del m._buffers[MASK]
    return len(mods)


def keep_masks(optimizer: torch.optim.Optimizer, model: nn.Module) -> Any:
    """Re-apply ``model``'s masks after every ``optimizer.step()`` (weight decay, momentum from
    before pruning and fused optimizers could otherwise move a pruned weight off zero).

    Returns the hook handle; ``handle.remove()`` stops it.
    """
    return optimizer.register_step_post_hook(lambda *_: reapply_masks(model))


def sparsity_of(modules: Iterable[nn.Module] | dict[str, nn.Module]) -> dict[str, Any]:
    """Zeros / total over the weights of ``modules`` (exact count, not from masks)."""
    mods = modules.values() if isinstance(modules, dict) else modules
    zeros = total = 0
    for m in mods:
        w = m.weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return {"zeros": zeros, "total": total, "sparsity": zeros / total if total else 0.0}


def is_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True if every group of ``m`` consecutive inputs of every row has at most ``n`` non-zeros."""
    out_f, in_f = weight.shape
    if in_f % m:
        return False
    nz = (weight.reshape(out_f, in_f // m, m) != 0).sum(-1)
    return bool((nz <= n).all())
