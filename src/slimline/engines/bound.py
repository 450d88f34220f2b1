"""The decode speed memory bandwidth allows: at batch 1 every generated token reads every weight
once, so ``bandwidth / bytes_per_token`` bounds tokens/s on this machine. A decode figure means
little without it: 100 tok/s is 40 % of the bound on one box and 90 % on another.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from typing import Any

import torch


@functools.cache
def read_bandwidth_gb_s(threads: int, mbytes: int = 512, repeats: int = 5) -> float:
    """Sustained read bandwidth (GB/s): a ``mbytes`` fp32 tensor summed with ``threads``
    threads, median of ``repeats`` after a warm-up. Measured once per process and thread count."""
    from slimline.profile.runtime import torch_threads

    x = torch.ones(mbytes * 2**20 // 4)
    with torch_threads(threads):
        x.sum()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            x.sum()
            ts.append(time.perf_counter() - t0)
    return x.numel() * 4 / statistics.median(ts) / 1e9


def gguf_bytes_per_token(path: str | os.PathLike[str]) -> int:
    """Weight bytes one decoded token reads from a GGUF file: every tensor but the input
    embedding (one row of it), plus the embedding in full when it doubles as the head (tied)."""
    from gguf import GGUFReader

    sizes = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    total = sum(sizes.values())
    if "output.weight" not in sizes:
        return total  # tied: the embedding is read in full as the head
    return total - sizes.get("token_embd.weight", 0)


def model_bytes_per_token(model: torch.nn.Module) -> int:
    """The same for a torch model: its parameter and buffer bytes (packed codes count as stored),
    less the input embedding when the head is a separate matrix."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen or t.device.type == "meta":
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and getattr(head, "weight", None) is getattr(emb, "weight", None)
    if head is not None and not tied:
        total -= emb.weight.numel() * emb.weight.element_size()
    return total


def bound_metrics(bytes_per_token: int, threads: int, decode_tok_s: float | None) -> dict[str, Any]:
    """``latency/bytes_per_token``, ``memory/bandwidth_gb_s``, ``latency/decode_bound_tok_s`` and
    the share of the bound the measured decode reached (``latency/decode_of_bound``)."""
    bw = read_bandwidth_gb_s(threads)
    bound = bw * 1e9 / bytes_per_token
    out: dict[str, Any] = {
        "latency/bytes_per_token": float(bytes_per_token),
        "memory/bandwidth_gb_s": bw,
        "latency/decode_bound_tok_s": bound,
    }
    if decode_tok_s:
        out["latency/decode_of_bound"] = decode_tok_s / bound
    return out
