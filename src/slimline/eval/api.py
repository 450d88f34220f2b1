"""``evaluate(model)``: quality of a causal LM or an encoder, alone and against a reference.

Causal LMs: perplexity and bits per byte on each dataset's eval windows (BENCH.md), calibration
(ECE), and with a reference, KL(reference || model) and top-1 agreement on the same windows.
Encoders (need a reference): cosine to the reference's sentence embeddings and recall@10 of the
reference's nearest neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from slimline.data import BUILTIN, eval_blocks, sentences
from slimline.errors import ConfigError, DataError
from slimline.eval.metrics import (
    CalibrationBins,
    kl_per_token,
    mean_cosine,
    neighbour_recall,
    shifted,
    token_nll,
    top1_agree,
)
from slimline.models import LoadedModel, embed
from slimline.profile._resolve import resolve
from slimline.progress import track

SUITES = ("default", "ppl")
RECALL_K = 10


def dataset_name(source: str) -> str:
    """The name a metric carries: a built-in's name, or a file's stem."""
    return source if source in BUILTIN else Path(source).stem


def _windows_for(lm: LoadedModel, data: Any, windows: int, seq_len: int) -> dict[str, torch.Tensor]:
    if isinstance(data, str):
        data = [data]
    if isinstance(data, Mapping):
        out = {}
        for name, ids in data.items():
            ids = torch.as_tensor(ids)
            if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
                raise DataError(
                    f"eval windows for {name!r} have shape {tuple(ids.shape)}; need [n>=1, T>=2] token ids",
                    "pass a LongTensor of windows, e.g. from slimline.data.eval_blocks",
                )
            out[name] = ids[:windows].long()
        return out
    if not isinstance(data, Sequence) or not data:
        raise DataError("no evaluation data given", "pass data=['python-docs'] or a text file path")
    if lm.tokenizer is None:
        raise ConfigError(
            "evaluating on text needs the model's tokenizer", "pass tokenizer=... or a LoadedModel"
        )
    return {
        dataset_name(s): eval_blocks(lm.tokenizer, s, seq_len=seq_len, max_blocks=windows)
        for s in data
    }


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


@torch.inference_mode()
def _causal(
    lm: LoadedModel,
    ref: LoadedModel | None,
    windows: dict[str, torch.Tensor],
    suite: str,
    batch_size: int,
) -> dict[str, float]:
    out: dict[str, float] = {}
    pooled_bins = CalibrationBins(15)
    pooled = {"kl": 0.0, "agree": 0.0, "n": 0}
    multi = len(windows) > 1
    for name, blocks in windows.items():
        nll_sum, n_tok, n_bytes = 0.0, 0, 0
        bins = CalibrationBins(15)
        kl_sum = agree_sum = 0.0
        batches = list(torch.split(blocks, batch_size))
        for ids in track(batches, f"eval {name}"):
            logp, targets = shifted(_logits(lm.model, ids), ids)
            nll_sum += float(token_nll(logp, targets).double().sum())
            n_tok += targets.numel()
            if lm.tokenizer is not None:
                for row in targets:
                    n_bytes += len(lm.tokenizer.decode(row.tolist()).encode("utf-8"))
            if suite == "default":
                bins.add_logp(logp, targets)
                pooled_bins.add_logp(logp, targets)
            if ref is not None and suite == "default":
                ref_logp, _ = shifted(_logits(ref.model, ids), ids)
                if ref_logp.shape[-1] != logp.shape[-1]:
                    raise ConfigError(
                        f"the reference predicts over {ref_logp.shape[-1]} tokens, the model over {logp.shape[-1]}",
                        "compare models that share a tokenizer",
                    )
                kl_sum += float(kl_per_token(ref_logp, logp).double().sum())
                agree_sum += float(top1_agree(ref_logp, logp).double().sum())
            del logp
        out[f"ppl/{name}"] = math.exp(nll_sum / n_tok)
        if n_bytes:
            out[f"bpb/{name}"] = nll_sum / math.log(2) / n_bytes
        if suite == "default":
            if multi:
                out[f"ece/{name}"] = bins.ece()
            if ref is not None:
                pooled["kl"] += kl_sum
                pooled["agree"] += agree_sum
                if multi:
                    out[f"kl/teacher/{name}"] = kl_sum / n_tok
                    out[f"agree/top1/{name}"] = agree_sum / n_tok
        pooled["n"] += n_tok
    if suite == "default":
        out["ece"] = pooled_bins.ece()
        out["overconfidence"] = pooled_bins.overconfidence()
        if ref is not None:
            out["kl/teacher"] = pooled["kl"] / pooled["n"]
            out["agree/top1"] = pooled["agree"] / pooled["n"]
    return out


@torch.inference_mode()
def sentence_embeddings(
    lm: LoadedModel, texts: list[str], max_len: int = 256, batch_size: int = 32
) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings of ``texts`` (as all-MiniLM-L6-v2 makes them)."""
    parts = []
    for i in track(
        range(0, len(texts), batch_size),
        f"embed {lm.source}",
        total=math.ceil(len(texts) / batch_size),
    ):
        enc = lm.tokenizer(
            texts[i : i + batch_size],
            padding=True,
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        parts.append(embed(lm, enc["input_ids"], enc["attention_mask"]).float())
    return torch.cat(parts)


def _encoder(
    lm: LoadedModel, ref: LoadedModel, data: Any, n_sentences: int, seq_len: int
) -> dict[str, float]:
    if isinstance(data, str):
        data = [data]
    if isinstance(data, Mapping) or not isinstance(data, Sequence) or not data:
        raise DataError(
            "encoder evaluation needs text sources", "pass data=['python-docs'] or a text file"
        )
    out: dict[str, float] = {}
    all_cos, all_rec = [], []
    for source in data:
        texts = sentences(source, split="eval", n=n_sentences)
        if len(texts) < 2:
            raise DataError(
                f"{source} gives {len(texts)} paragraph(s); retrieval agreement needs at least 2",
                "use a source with more paragraphs",
            )
        e = sentence_embeddings(lm, texts, max_len=min(seq_len, 512))
        r = sentence_embeddings(ref, texts, max_len=min(seq_len, 512))
        name = dataset_name(source)
        rec = neighbour_recall(r, e, RECALL_K)
        all_rec.append(rec)
        if len(data) > 1:
            out[f"recall@{RECALL_K}/teacher/{name}"] = rec
        if e.shape[-1] == r.shape[-1]:  # cosine needs one embedding space; recall does not
            cos = mean_cosine(e, r)
            all_cos.append(cos)
            if len(data) > 1:
                out[f"cos/teacher/{name}"] = cos
    if all_cos:
        out["cos/teacher"] = sum(all_cos) / len(all_cos)
    out[f"recall@{RECALL_K}/teacher"] = sum(all_rec) / len(all_rec)
    return out


def evaluate(
    model_or_loaded: Any,
    *,
    data: Sequence[str] | Mapping[str, torch.Tensor] | str = ("python-docs",),
    reference: Any = None,
    windows: int = 64,
    seq_len: int = 512,
    suite: str = "default",
    batch_size: int = 1,
    n_sentences: int = 256,
    tokenizer: Any = None,
) -> dict[str, float]:
    """Quality metrics of a model (named as everywhere: ``ppl/<data>``, ``bpb/<data>``, ``ece``,
    ``kl/teacher``, ``agree/top1``, ``cos/teacher``, ``recall@10/teacher``).

    ``data``: built-in names or text paths (their eval part, at most ``windows`` non-overlapping
    ``seq_len``-token windows), or a mapping name -> ``[n, T]`` token ids. The model and the
    reference see the same windows. ``suite="ppl"`` computes perplexity / bits per byte only.
    """
    if suite not in SUITES:
        raise ConfigError(f"unknown evaluation suite {suite!r}", f"use one of: {', '.join(SUITES)}")
    if windows < 1:
        raise ConfigError(
            f"windows must be at least 1 (got {windows})",
            "evaluate on 1 or more windows, e.g. --windows 64",
        )
    if seq_len < 2:
        raise ConfigError(
            f"seq_len must be at least 2 (got {seq_len})", "use windows of 2 or more tokens"
        )
    if batch_size < 1:
        raise ConfigError(
            f"batch_size must be at least 1 (got {batch_size})", "pass batch_size >= 1"
        )
    lm = resolve(model_or_loaded, tokenizer)
    ref = resolve(reference, tokenizer) if reference is not None else None
    if ref is not None and ref.kind != lm.kind:
        raise ConfigError(
            f"cannot compare a {lm.kind} model with a {ref.kind} reference",
            "pass a reference of the same kind",
        )
    states = [(m.model, m.model.training) for m in (lm, ref) if m is not None]
    for m, _ in states:
        m.eval()
    try:
        if lm.kind == "encoder":
            if ref is None:
                raise ConfigError(
                    "an encoder is evaluated against a reference's embeddings (cosine, retrieval agreement)",
                    "pass reference=... (e.g. the uncompressed model; --reference on the CLI)",
                )
            return _encoder(lm, ref, data, n_sentences, seq_len)
        windows_by_name = _windows_for(lm, data, windows, seq_len)
        return _causal(lm, ref, windows_by_name, suite, batch_size)
    finally:
        for m, was in states:
            m.train(was)


@torch.inference_mode()
def hf_perplexity(model: torch.nn.Module, blocks: torch.Tensor) -> float:
    """exp(mean of transformers' own ``labels=`` loss over equal-length windows): the cross-check
    our perplexity must reproduce (each window's loss is a mean over its T-1 predictions)."""
    losses = [
        float(model(input_ids=ids[None], labels=ids[None], use_cache=False).loss) for ids in blocks
    ]
    return math.exp(sum(losses) / len(losses))
