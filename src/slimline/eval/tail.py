"""Distribution metrics that see the tail, and domain shift as a ratio to the reference's.

Mean KL hides the rare tokens that matter: a compressed model can match the reference on 99 % of
tokens and be badly wrong on the rest (Dutta et al. 2024, "Accuracy is not all you need"). So per
dataset we report KL(reference || model) at its mean, p90, p99 and max over tokens, and the share
of tokens whose top-1 choice flips. Domain shift divides the model's perplexity ratio
(shifted / home domain) by the reference's, so sensitivity to the shift is separated from damage
that shows everywhere.
"""

from __future__ import annotations

import math

import torch

from slimline.data import eval_blocks
from slimline.eval.api import dataset_name
from slimline.eval.engine import LogitsEngine
from slimline.eval.metrics import CalibrationBins, kl_per_token, token_nll, top1_agree
from slimline.eval.tasks import TaskConfig, TaskContext, TaskResult, register_task


class Tail(TaskConfig):
    """Per-dataset perplexity, bits per byte, token ECE and, against a reference, the KL tail."""

    name = "tail"
    datasets: tuple[str, ...] = ("python-docs", "shakespeare")
    windows: int = 4
    seq_len: int = 512


class DomainShift(TaskConfig):
    """``shift/<dataset>``: (ppl shifted / ppl home) of the model over the reference's."""

    name = "domain"
    home: str = "python-docs"
    shifted: tuple[str, ...] = ("shakespeare",)
    windows: int = 4
    seq_len: int = 512


def _windows(ctx: TaskContext, source: str, windows: int, seq_len: int) -> torch.Tensor:
    tok = ctx.model.tokenizer
    n = ctx.n(windows)
    return ctx.cached(
        ("windows", source, n, seq_len),
        lambda: eval_blocks(tok, source, seq_len=seq_len, max_blocks=n),
    )


def _quantile(x: torch.Tensor, q: float) -> float:
    return float(torch.quantile(x.double(), q)) if x.numel() <= 16_000_000 else float("nan")


def _nll_key(engine: LogitsEngine, source: str, n: int, seq_len: int) -> tuple:
    return ("nll", engine, source, n, seq_len)


def _logp(lg: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(lg[:-1], dim=-1)


def dataset_ppl(
    ctx: TaskContext, engine: LogitsEngine, source: str, windows: int, seq_len: int
) -> float:
    """Perplexity of ``engine`` on a dataset's eval windows (memoised across tasks)."""
    blocks = _windows(ctx, source, windows, seq_len)

    def compute() -> float:
        nll, n = 0.0, 0
        for ids in blocks:
            (lg,) = engine.logits([ids])
            nll += float(token_nll(_logp(lg), ids[1:]).double().sum())
            n += ids.numel() - 1
        return nll / n

    return math.exp(ctx.cached(_nll_key(engine, source, len(blocks), seq_len), compute))


def _bytes(tok: object, ids: torch.Tensor) -> int:
    return len(tok.decode(ids.tolist()).encode("utf-8"))  # type: ignore[attr-defined]


@register_task(Tail)
def run_tail(cfg: Tail, ctx: TaskContext) -> TaskResult:
    res = TaskResult()
    pooled = {name: CalibrationBins(15) for name, _ in ctx.engines()}
    pooled_kl: list[torch.Tensor] = []
    pooled_agree: list[torch.Tensor] = []
    for source in cfg.datasets:
        ds = dataset_name(source)
        blocks = _windows(ctx, source, cfg.windows, cfg.seq_len)
        nll = {name: 0.0 for name, _ in ctx.engines()}
        bins = {name: CalibrationBins(15) for name, _ in ctx.engines()}
        kls, agrees = [], []
        n_tok = n_bytes = 0
        for ids in blocks:
            targets = ids[1:]
            logps = {}
            for name, engine in ctx.engines():
                (lg,) = engine.logits([ids])
                lp = _logp(lg)
                nll[name] += float(token_nll(lp, targets).double().sum())
                bins[name].add_logp(lp, targets)
                pooled[name].add_logp(lp, targets)
                logps[name] = lp
            if "reference" in logps:
                kls.append(kl_per_token(logps["reference"], logps["model"]))
                agrees.append(top1_agree(logps["reference"], logps["model"]))
            n_tok += targets.numel()
            n_bytes += _bytes(ctx.model.tokenizer, targets)
        for name, engine in ctx.engines():
            out = res.metrics if name == "model" else res.reference
            ctx.memo[_nll_key(engine, source, len(blocks), cfg.seq_len)] = nll[name] / n_tok
            out[f"ppl/{ds}"] = math.exp(nll[name] / n_tok)
            out[f"bpb/{ds}"] = nll[name] / math.log(2) / n_bytes
            out[f"ece/{ds}"] = bins[name].ece()
        if kls:
            kl, agree = torch.cat(kls), torch.cat(agrees).double()
            pooled_kl.append(kl)
            pooled_agree.append(agree)
            res.metrics[f"kl/teacher/{ds}"] = float(kl.double().mean())
            res.metrics[f"kl/p90/{ds}"] = _quantile(kl, 0.90)
            res.metrics[f"kl/p99/{ds}"] = _quantile(kl, 0.99)
            res.metrics[f"kl/max/{ds}"] = float(kl.max())
            res.metrics[f"agree/top1/{ds}"] = float(agree.mean())
            res.metrics[f"flip/top1/{ds}"] = 1.0 - float(agree.mean())
    for name, _ in ctx.engines():
        out = res.metrics if name == "model" else res.reference
        out["ece"] = pooled[name].ece()
        out["overconfidence"] = pooled[name].overconfidence()
    if pooled_kl:
        kl, agree = torch.cat(pooled_kl), torch.cat(pooled_agree)
        res.metrics["kl/teacher"] = float(kl.double().mean())
        res.metrics["kl/p99"] = _quantile(kl, 0.99)
        res.metrics["agree/top1"] = float(agree.mean())
        res.metrics["flip/top1"] = 1.0 - float(agree.mean())
    return res


@register_task(DomainShift)
def run_domain(cfg: DomainShift, ctx: TaskContext) -> TaskResult:
    if ctx.reference is None:
        return TaskResult(skipped=["domain: the shift ratio is relative to a reference; pass one"])
    res = TaskResult()
    ppl = {
        name: {
            s: dataset_ppl(ctx, e, s, cfg.windows, cfg.seq_len) for s in (cfg.home, *cfg.shifted)
        }
        for name, e in ctx.engines()
    }
    for s in cfg.shifted:
        m = ppl["model"][s] / ppl["model"][cfg.home]
        r = ppl["reference"][s] / ppl["reference"][cfg.home]
        res.metrics[f"shift/{dataset_name(s)}"] = m / r
        res.reference[f"shift/{dataset_name(s)}"] = 1.0
    return res
