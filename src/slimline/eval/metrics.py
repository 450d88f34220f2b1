"""The math of each metric, on tensors: no models, no data loading.

Conventions: ``logits`` are ``[B, T, V]``; the prediction at position t is scored against the
token at t+1, so a window of T tokens gives T-1 predictions (as transformers' ``labels=`` loss).
Everything is computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shifted(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 log-probabilities of the predicting positions ``[B, T-1, V]`` and their targets."""
    return F.log_softmax(logits[:, :-1].float(), dim=-1), ids[:, 1:]


def token_nll(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (nats) of each target token, ``[B, T-1]``."""
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def kl_per_token(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) in nats at each position: how much of the reference's next-token
    distribution the model loses (zero only when the distributions match)."""
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp_min(0.0)


def top1_agree(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Whether the model's greedy choice equals the reference's, at each position."""
    return ref_logp.argmax(-1) == logp.argmax(-1)


class CalibrationBins:
    """Streaming reliability diagram: equal-width confidence bins ``(i/n, (i+1)/n]``.

    ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b| (Guo et al. 2017), over the top-1
    next-token predictions. Over-confidence = Σ_b (n_b/N)·max(0, conf_b − acc_b).
    """

    def __init__(self, n_bins: int = 15):
        if n_bins < 1:
            raise ValueError("n_bins must be >= 1")
        self.n_bins = n_bins
        self.count = torch.zeros(n_bins, dtype=torch.float64)
        self.conf = torch.zeros(n_bins, dtype=torch.float64)
        self.correct = torch.zeros(n_bins, dtype=torch.float64)

    def add(self, confidence: torch.Tensor, correct: torch.Tensor) -> None:
        c = confidence.detach().reshape(-1).double()
        k = correct.detach().reshape(-1).double()
        b = (torch.ceil(c * self.n_bins).long() - 1).clamp(0, self.n_bins - 1)
        self.count += torch.bincount(b, minlength=self.n_bins).double()
        self.conf += torch.bincount(b, weights=c, minlength=self.n_bins)
        self.correct += torch.bincount(b, weights=k, minlength=self.n_bins)

    def add_logp(self, logp: torch.Tensor, targets: torch.Tensor) -> None:
        conf, pred = logp.max(-1)
        self.add(conf.exp(), pred == targets)

    def _gaps(self) -> torch.Tensor:
        n = self.count.clamp_min(1.0)
        return self.conf / n - self.correct / n

    def ece(self) -> float:
        total = float(self.count.sum())
        if total == 0:
            return float("nan")
        return float((self.count / total * self._gaps().abs()).sum())

    def overconfidence(self) -> float:
        total = float(self.count.sum())
        if total == 0:
            return float("nan")
        return float((self.count / total * self._gaps().clamp_min(0.0)).sum())


def expected_calibration_error(
    confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15
) -> float:
    """ECE of predictions with top-1 ``confidence`` in (0, 1] and 0/1 ``correct``."""
    bins = CalibrationBins(n_bins)
    bins.add(confidence, correct)
    return bins.ece()


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of matching rows of two ``[N, D]`` embedding matrices."""
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def neighbour_recall(ref: torch.Tensor, emb: torch.Tensor, k: int = 10) -> float:
    """Recall@k of the reference's neighbours: for each item, the share of its k nearest
    neighbours under the reference embeddings that are also among its k nearest under the
    model's (cosine, excluding itself). 1.0 = the model retrieves exactly what the reference does.
    Works across embedding widths (a distilled student may be narrower)."""
    n = ref.shape[0]
    if n < 2:
        raise ValueError("retrieval agreement needs at least 2 items")
    k = min(k, n - 1)

    def topk(e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e.float(), dim=-1)
        sims = e @ e.T
        sims.fill_diagonal_(float("-inf"))
        return sims.topk(k, dim=-1).indices

    r, m = topk(ref), topk(emb)
    hits = (r.unsqueeze(-1) == m.unsqueeze(-2)).any(-1).sum(-1).double()
    return float((hits / k).mean())
