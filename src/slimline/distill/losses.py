"""Distillation losses: small pure functions over tensors, combined with weights by the trainer.

Every loss takes the student's output first and the teacher's second, respects a padding mask
(1 = real token, 0 = padding) and returns a scalar that is 0 when student and teacher agree.

- ``soft_kl``: Hinton et al. 2015 soft targets, KL at temperature ``T`` scaled by ``T**2`` so the
  gradient size does not depend on ``T``; ``direction="reverse"`` gives KL(student || teacher),
  the mode-seeking form used for generative students (MiniLLM, Gu et al. 2023).
- ``generalized_jsd``: the beta-skewed Jensen-Shannon divergence of GKD (Agarwal et al. 2024);
  beta -> 0 behaves like forward KL, beta -> 1 like reverse KL.
- ``hidden_loss`` with ``layer_map``/``HiddenProjection``: feature matching (FitNets, TinyBERT).
- ``attention_kl`` and ``value_relation_loss``: MiniLM (Wang et al. 2020) self-attention transfer.
- ``embedding_loss``: sentence-embedding matching for encoders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slimline.errors import ConfigError

__all__ = [
    "HiddenProjection",
    "attention_kl",
    "combine",
    "cross_entropy",
    "embedding_loss",
    "generalized_jsd",
    "hidden_loss",
    "layer_map",
    "mean_pool",
    "soft_kl",
    "topk_kl",
    "value_relation_loss",
]


def _masked_mean(per_pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_pos`` ([B, T] or [B, ...]) over positions where ``mask`` is 1."""
    if mask is None:
        return per_pos.mean()
    m = mask.to(per_pos.dtype)
    while m.dim() < per_pos.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(per_pos)
    return (per_pos * m).sum() / m.sum().clamp(min=1.0)


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ConfigError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ",
            "logit losses need the same tokenizer and vocabulary for both models; "
            "use hidden/embedding losses across vocabularies",
        )


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis from log-probabilities; 0*log0 counts as 0."""
    p = log_p.exp()
    return (p * (log_p - log_q)).where(p > 0, torch.zeros((), dtype=p.dtype)).sum(-1)


def soft_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
    direction: str = "forward",
) -> torch.Tensor:
    """KL between softened distributions times ``T**2`` (Hinton 2015), mean over real positions.

    ``forward`` = KL(teacher || student) (mean-seeking, the classic soft-target loss);
    ``reverse`` = KL(student || teacher) (mode-seeking).
    """
    _check_logits(student_logits, teacher_logits)
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0 (got {temperature})", "use e.g. 1.0 or 2.0")
    ls = F.log_softmax(student_logits.float() / temperature, dim=-1)
    lt = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if direction == "forward":
        per = _kl(lt, ls)
    elif direction == "reverse":
        per = _kl(ls, lt)
    else:
        raise ConfigError(f"unknown KL direction {direction!r}", "use 'forward' or 'reverse'")
    return _masked_mean(per, mask) * temperature**2


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalized JSD (GKD): ``beta*KL(t||m) + (1-beta)*KL(s||m)``, ``m = beta*t + (1-beta)*s``."""
    _check_logits(student_logits, teacher_logits)
    if not 0.0 < beta < 1.0:
        raise ConfigError(
            f"JSD beta must be strictly between 0 and 1 (got {beta})",
            "use soft_kl for the limits (forward: beta->0, reverse: beta->1)",
        )
    ls = F.log_softmax(student_logits.float() / temperature, dim=-1)
    lt = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    lm = torch.logsumexp(
        torch.stack([lt + math.log(beta), ls + math.log(1 - beta)]), dim=0
    )  # log of the mixture, stable
    per = beta * _kl(lt, lm) + (1 - beta) * _kl(ls, lm)
    return _masked_mean(per, mask) * temperature**2


def topk_kl(
    student_logits: torch.Tensor,
    topk_index: torch.Tensor,
    topk_logits: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward KL against a teacher stored as its top-k logits (renormalised over those k).

    Lets a cached teacher (``teachers.cache_teacher``) stand in for the live one: with k = vocab
    it equals ``soft_kl``; with small k it keeps the bulk of the teacher's mass at a fraction of
    the disk.
    """
    lt = F.log_softmax(topk_logits.float() / temperature, dim=-1)
    ls_full = F.log_softmax(student_logits.float() / temperature, dim=-1)
    ls = ls_full.gather(-1, topk_index.long())
    per = _kl(lt, ls)
    return _masked_mean(per, mask) * temperature**2


def cross_entropy(
    logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM on its own input (hard labels), padding ignored."""
    pred = logits[:, :-1].float()
    target = input_ids[:, 1:].long()
    per = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    m = None if mask is None else (mask[:, 1:] * mask[:, :-1])
    return _masked_mean(per.view(target.shape), m)


# --- features -----------------------------------------------------------------------------------


def layer_map(
    n_student: int, n_teacher: int, strategy: str | Sequence[int] | Mapping[int, int] = "uniform"
) -> dict[int, int]:
    """Which teacher layer each student layer imitates, as {student_layer: teacher_layer}.

    Layers count from 1 (index 0 of HF ``hidden_states`` is the embedding output). ``uniform``
    spreads the student over the teacher's depth (student i -> teacher round(i*n_t/n_s), so the
    last layers match); ``last`` matches the student to the teacher's last ``n_student`` layers;
    a list gives the teacher layer for each student layer in order; a dict is used as given.
    """
    if n_student < 1 or n_teacher < 1:
        raise ConfigError(
            f"layer maps need at least one layer (student {n_student}, teacher {n_teacher})",
            "check the models",
        )
    if isinstance(strategy, str):
        if strategy == "uniform":
            return {i: max(1, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)}
        if strategy in ("last", "last-k"):
            if n_student > n_teacher:
                raise ConfigError(
                    f"'last' maps {n_student} student layers onto {n_teacher} teacher layers",
                    "use 'uniform' or an explicit map when the student is deeper",
                )
            return {i: n_teacher - n_student + i for i in range(1, n_student + 1)}
        raise ConfigError(
            f"unknown layer map {strategy!r}",
            "use 'uniform', 'last', a list of teacher layers or a {student: teacher} dict",
        )
    pairs = (
        {int(k): int(v) for k, v in strategy.items()}
        if isinstance(strategy, Mapping)
        else {i + 1: int(t) for i, t in enumerate(strategy)}
    )
    for s, t in pairs.items():
        if not (0 <= s <= n_student and 0 <= t <= n_teacher):
            raise ConfigError(
                f"layer map pair {s}->{t} is outside the models (student 0..{n_student}, "
                f"teacher 0..{n_teacher}; 0 = embeddings)",
                "fix the explicit layer map",
            )
    if not pairs:
        raise ConfigError("the explicit layer map is empty", "give at least one pair")
    return dict(sorted(pairs.items()))


class HiddenProjection(nn.Module):
    """Learned linear maps from student width to teacher width, one per mapped layer (FitNets).

    Created only when widths differ; trained together with the student and dropped afterwards.
    Initialised as a (padded/truncated) identity so matching starts from the raw features.
    """

    def __init__(self, student_dim: int, teacher_dim: int, layers: Sequence[int]):
        super().__init__()
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.layers = [int(i) for i in layers]
        self.proj = nn.ModuleDict()
        for i in self.layers:
            lin = nn.Linear(student_dim, teacher_dim, bias=False)
            with torch.no_grad():
                lin.weight.zero_()
                n = min(student_dim, teacher_dim)
                lin.weight[:n, :n] = torch.eye(n)
            self.proj[str(i)] = lin

    def forward(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        return self.proj[str(layer)](h)


def hidden_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    mapping: Mapping[int, int],
    projection: HiddenProjection | None = None,
    kind: str = "mse",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over mapped layers of MSE (per feature) or 1 - cosine between hidden states.

    ``student_hidden``/``teacher_hidden`` are HF ``hidden_states`` tuples (index 0 = embeddings).
    """
    if kind not in ("mse", "cosine"):
        raise ConfigError(f"unknown hidden loss {kind!r}", "use 'mse' or 'cosine'")
    terms = []
    for s_i, t_i in mapping.items():
        hs, ht = student_hidden[s_i].float(), teacher_hidden[t_i].float()
        if projection is not None and str(s_i) in projection.proj:
            hs = projection(s_i, hs)
        if hs.shape[-1] != ht.shape[-1]:
            raise ConfigError(
                f"student layer {s_i} has width {hs.shape[-1]}, teacher layer {t_i} has {ht.shape[-1]}",
                "add a HiddenProjection (the trainer does when widths differ)",
            )
        if kind == "mse":
            per = (hs - ht).pow(2).mean(-1)
        else:
            per = 1.0 - F.cosine_similarity(hs, ht, dim=-1, eps=1e-8)
        terms.append(_masked_mean(per, mask))
    return torch.stack(terms).mean()


def _pair_mask(mask: torch.Tensor | None, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """(query mask [B,1,T], key mask [B,1,1,T]) of ones when no mask is given."""
    B, T = shape[0], shape[-1]
    if mask is None:
        mask = torch.ones(B, T)
    m = mask.float()
    return m[:, None, :], m[:, None, None, :]


def _relation_kl(
    log_t: torch.Tensor, log_s: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """KL per query row of [B, H, T, T] log-distributions, averaged over heads and real queries."""
    per = _kl(log_t, log_s).mean(1)  # [B, T]
    return _masked_mean(per, mask)


def attention_kl(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """KL(teacher || student) between attention distributions [B, H, T, T] (MiniLM, 2020).

    When head counts differ, each model's heads are averaged first (the mean of distributions is
    a distribution), so any student can learn from any teacher of the same sequence length.
    """
    if student_attn.shape[1] != teacher_attn.shape[1]:
        student_attn = student_attn.mean(1, keepdim=True)
        teacher_attn = teacher_attn.mean(1, keepdim=True)
    if student_attn.shape != teacher_attn.shape:
        raise ConfigError(
            f"attention maps {tuple(student_attn.shape)} and {tuple(teacher_attn.shape)} differ",
            "feed both models the same tokens",
        )
    _, key_mask = _pair_mask(mask, student_attn.shape)
    ps = student_attn.float() * key_mask
    pt = teacher_attn.float() * key_mask
    ls = (ps / ps.sum(-1, keepdim=True).clamp(min=eps)).clamp(min=eps).log()
    lt = (pt / pt.sum(-1, keepdim=True).clamp(min=eps)).clamp(min=eps).log()
    lt = lt.where(pt > 0, torch.full((), -math.inf))
    return _relation_kl(lt, ls, mask)


def _relation(x: torch.Tensor, n_heads: int, key_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """log softmax(x_h x_h^T / sqrt(d_h)) per relation head: [B, n_heads, T, T]."""
    B, T, C = x.shape
    if C % n_heads:
        raise ConfigError(
            f"width {C} does not split into {n_heads} relation heads",
            "choose relation_heads dividing both widths",
        )
    xh = x.float().view(B, T, n_heads, C // n_heads).transpose(1, 2)
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(C // n_heads)
    allowed = key_mask > 0
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
    allowed = allowed | torch.eye(T, dtype=torch.bool)  # no empty row: a padded query sees itself
    scores = scores.masked_fill(~allowed, -math.inf)
    return F.log_softmax(scores, dim=-1)


def value_relation_loss(
    student_values: torch.Tensor,
    teacher_values: torch.Tensor,
    mask: torch.Tensor | None = None,
    relation_heads: int = 1,
    causal: bool = False,
) -> torch.Tensor:
    """MiniLM value-relation transfer: KL between softmax(V V^T / sqrt(d)) of teacher and student.

    ``*_values`` are the value projections [B, T, C] of one layer (widths may differ: relations
    are T x T). ``relation_heads`` splits C into that many heads in both models (MiniLMv2).
    ``causal`` restricts each query to earlier keys, as a decoder attends.
    """
    _, key_mask = _pair_mask(mask, student_values.shape[:2])
    ls = _relation(student_values, relation_heads, key_mask, causal)
    lt = _relation(teacher_values, relation_heads, key_mask, causal)
    return _relation_kl(lt, ls.where(ls > -math.inf, torch.full((), -1e9)), mask)


# --- embeddings ---------------------------------------------------------------------------------


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of token states over real tokens: the sentence embedding of MiniLM-style encoders."""
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def embedding_loss(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, kind: str = "cosine"
) -> torch.Tensor:
    """1 - cosine (direction only, what retrieval uses) or MSE between sentence embeddings [B, C]."""
    if student_emb.shape != teacher_emb.shape:
        raise ConfigError(
            f"student embeddings {tuple(student_emb.shape)} and teacher {tuple(teacher_emb.shape)} differ",
            "project the student to the teacher width (HiddenProjection) or use the same width",
        )
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student_emb.float(), teacher_emb.float(), dim=-1)).mean()
    if kind == "mse":
        return (student_emb.float() - teacher_emb.float()).pow(2).mean()
    raise ConfigError(f"unknown embedding loss {kind!r}", "use 'cosine' or 'mse'")


def combine(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Weighted sum of loss terms; a weight with no term is a configuration error."""
    missing = [k for k, w in weights.items() if w and k not in terms]
    if missing:
        raise ConfigError(
            f"loss weights {missing} have no computed term", f"computed terms: {sorted(terms)}"
        )
    total = None
    for k, w in weights.items():
        if w:
            total = terms[k] * w if total is None else total + terms[k] * w
    if total is None:
        raise ConfigError("every loss weight is zero", "give at least one loss a positive weight")
    return total
