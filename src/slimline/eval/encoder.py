"""Encoders: does the compressed model retrieve and rank similarity as its reference does?

``recall@<k>/teacher``: share of each sentence's k nearest neighbours under the reference that the
model also returns. ``spearman/teacher``: rank correlation of all pairwise cosine similarities
(model vs reference), the semantic-similarity (STS) agreement. ``cos/teacher``: mean cosine of
matching embeddings when both share a width.
"""

from __future__ import annotations

import torch

from slimline.data import sentences
from slimline.eval.api import dataset_name, sentence_embeddings
from slimline.eval.metrics import mean_cosine, neighbour_recall
from slimline.eval.tasks import TaskConfig, TaskContext, TaskResult, register_task


class Retrieval(TaskConfig):
    """Retrieval and similarity agreement of an encoder with its reference."""

    name = "retrieval"
    judges = ("encoder",)
    sources: tuple[str, ...] = ("python-docs",)
    n: int = 128
    k: int = 10
    max_len: int = 128


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (Pearson of their ranks)."""
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def _pair_sims(e: torch.Tensor) -> torch.Tensor:
    e = torch.nn.functional.normalize(e.float(), dim=-1)
    s = e @ e.T
    i, j = torch.triu_indices(len(e), len(e), offset=1)
    return s[i, j]


@register_task(Retrieval)
def run_retrieval(cfg: Retrieval, ctx: TaskContext) -> TaskResult:
    if ctx.loaded_reference is None:
        return TaskResult(
            skipped=["retrieval: agreement is measured against a reference; pass one"]
        )
    res = TaskResult()
    rec, rho, cos = [], [], []
    for source in cfg.sources:
        texts = sentences(source, split="eval", n=ctx.n(cfg.n))
        e = sentence_embeddings(ctx.loaded, texts, max_len=cfg.max_len)
        r = sentence_embeddings(ctx.loaded_reference, texts, max_len=cfg.max_len)
        name = dataset_name(source)
        rec.append(neighbour_recall(r, e, cfg.k))
        rho.append(spearman(_pair_sims(e), _pair_sims(r)))
        res.metrics[f"recall@{cfg.k}/teacher/{name}"] = rec[-1]
        res.metrics[f"spearman/teacher/{name}"] = rho[-1]
        if e.shape[-1] == r.shape[-1]:
            cos.append(mean_cosine(e, r))
    res.metrics[f"recall@{cfg.k}/teacher"] = sum(rec) / len(rec)
    res.metrics["spearman/teacher"] = sum(rho) / len(rho)
    if cos:
        res.metrics["cos/teacher"] = sum(cos) / len(cos)
    return res
