"""Importance scores: how much work each weight does, so pruning removes what does little.

- ``magnitude``: |W| — data-free, the classic baseline.
- ``wanda``: |W| x ||X_j||_2 — a weight matters as much as the activations it multiplies
  (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"); LLMs have a few input
  features with huge activations, which magnitude alone prunes blindly.
- ``taylor``: |W * dL/dW| — the first-order change of the loss when a weight is zeroed
  (Molchanov et al. 2019), from gradients of the LM loss on data.
- ``activation_stats``: per-input-feature L2 norm / mean |x| of each linear's input, the
  statistic Wanda and OWL use, and per-output mean |y| for channel-level decisions.

``rank`` turns any score dict into masks: per layer, per output row (Wanda's comparison group),
global across layers, or N:M.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from slimline.errors import ConfigError, DataError
from slimline.prune.masks import global_masks, nm_mask, parse_pattern, topk_mask

Scope = Literal["layer", "row", "global"]


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """|W|: importance without data."""
    return weight.detach().abs().float()


def wanda(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2, with ``input_norm`` the L2 norm of input feature j over all tokens."""
    if input_norm.numel() != weight.shape[1]:
        raise ConfigError(
            f"activation norms have {input_norm.numel()} features, weight has {weight.shape[1]} inputs",
            "collect the norms on this layer's own input",
        )
    return weight.detach().abs().float() * input_norm.float().reshape(1, -1)


@dataclass
class InputStats:
    """Running statistics of one linear layer's input features (and output channels)."""

    sumsq: torch.Tensor | None = None
    sumabs: torch.Tensor | None = None
    out_sumabs: torch.Tensor | None = None
    n_tokens: int = 0
    extra: dict = field(default_factory=dict)

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        if self.sumsq is None:
            self.sumsq = torch.zeros(x2.shape[1], dtype=torch.float64, device=x2.device)
            self.sumabs = torch.zeros_like(self.sumsq)
        self.sumsq += (x2 * x2).sum(0, dtype=torch.float64)
        self.sumabs += x2.abs().sum(0, dtype=torch.float64)
        if y is not None:
            y2 = y.detach().reshape(-1, y.shape[-1]).float()
            if self.out_sumabs is None:
                self.out_sumabs = torch.zeros(y2.shape[1], dtype=torch.float64, device=y2.device)
            self.out_sumabs += y2.abs().sum(0, dtype=torch.float64)
        self.n_tokens += x2.shape[0]

    @property
    def l2(self) -> torch.Tensor:
        """||X_j||_2 over every token seen (what Wanda multiplies |W| by)."""
        if self.sumsq is None:
            raise DataError("no activations were recorded for this layer", "run data through it")
        return self.sumsq.sqrt().float()

    @property
    def mean_abs(self) -> torch.Tensor:
        if self.sumabs is None:
            raise DataError("no activations were recorded for this layer", "run data through it")
        return (self.sumabs / max(self.n_tokens, 1)).float()


def _check_ids(ids: torch.Tensor) -> None:
    if (
        not isinstance(ids, torch.Tensor)
        or ids.ndim != 2
        or ids.dtype != torch.long
        or not len(ids)
    ):
        raise DataError(
            "data must be a non-empty [samples, tokens] LongTensor of token ids",
            "use slimline.data.calibration_blocks(tokenizer, ...)",
        )


@torch.no_grad()
def activation_stats(
    model: nn.Module,
    ids: torch.Tensor,
    modules: dict[str, nn.Module],
    *,
    batch_size: int = 4,
    outputs: bool = False,
) -> dict[str, InputStats]:
    """Input (and optionally output) statistics of ``modules`` over a full forward on ``ids``.

    For block-by-block collection on large models use the calibration engine (Wanda does).
    """
    _check_ids(ids)
    stats = {n: InputStats() for n in modules}
    handles = []
    for name, mod in modules.items():

        def hook(_m: nn.Module, args: tuple, out: torch.Tensor, _n: str = name) -> None:
            stats[_n].add(args[0], out if outputs else None)

        handles.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for i in range(0, len(ids), batch_size):
            model(input_ids=ids[i : i + batch_size], use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return stats


def taylor(
    model: nn.Module,
    ids: torch.Tensor,
    modules: dict[str, nn.Module],
    *,
    batch_size: int = 2,
) -> dict[str, torch.Tensor]:
    """|W * dL/dW| with the gradient of the causal-LM loss summed over ``ids``.

    Leaves the model's weights and ``.grad`` fields as they were.
    """
    _check_ids(ids)
    params = {n: m.weight for n, m in modules.items()}
    saved_req = {n: p.requires_grad for n, p in params.items()}
    saved_grad = {n: p.grad for n, p in params.items()}
    grads = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was = model.training
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        for i in range(0, len(ids), batch_size):
            batch = ids[i : i + batch_size]
            out = model(input_ids=batch, labels=batch, use_cache=False)
            if getattr(out, "loss", None) is None:
                raise ConfigError(
                    "Taylor importance needs a model that returns a loss from labels",
                    "use a causal LM, or magnitude/activation importance for encoders",
                )
            out.loss.backward()
            for n, p in params.items():
                if p.grad is not None:
                    grads[n] += p.grad.float()
                    p.grad = None
    finally:
        for n, p in params.items():
            p.requires_grad_(saved_req[n])
            p.grad = saved_grad[n]
        model.train(was)
    return {n: (params[n].detach().float() * grads[n]).abs() for n in params}


def rank(
    scores: dict[str, torch.Tensor],
    *,
    sparsity: float | dict[str, float] = 0.5,
    pattern: str | None = None,
    scope: Scope = "layer",
) -> dict[str, torch.Tensor]:
    """Masks (True = keep) from scores.

    ``scope``: ``layer`` prunes the lowest fraction of each tensor, ``row`` of each output row
    (Wanda's choice: rows compete for the same output), ``global`` uses one threshold over all
    layers. ``pattern="N:M"`` overrides sparsity. ``sparsity`` may be a per-layer dict
    (a non-uniform allocation from ``sensitivity``).
    """
    if pattern:
        n, m = parse_pattern(pattern)
        return {k: nm_mask(s, n, m) for k, s in scores.items()}
    if scope == "global":
        if isinstance(sparsity, dict):
            raise ConfigError("global ranking takes one sparsity", "pass a float, or scope='layer'")
        return global_masks(scores, sparsity)
    if scope not in ("layer", "row"):
        raise ConfigError(f"unknown ranking scope {scope!r}", "use layer, row or global")
    out = {}
    for k, s in scores.items():
        sp = sparsity.get(k, 0.0) if isinstance(sparsity, dict) else sparsity
        out[k] = topk_mask(s, sp, per_row=scope == "row")
    return out
