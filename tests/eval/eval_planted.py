"""Compressions that each break one known thing (shared by tests/eval/test_planted.py and
bench/eval_suite.py). Every function returns a modified deep copy; the input stays as it was."""

from __future__ import annotations

import copy
from collections import Counter

import torch

from slimline.data import text_part
from slimline.eval import TorchEngine


def int8(lm):
    """A healthy compression: 8-bit round-to-nearest weights (group 128)."""
    from slimline.quant import Rtn, quantize

    out = copy.deepcopy(lm)
    quantize(out.model, Rtn(bits=8, group_size=128))
    return out


def kv_cache(lm, bits: int = 2, group_size: int | None = None) -> TorchEngine:
    """The same weights served with a coarse quantized KV cache (prefill in 256-token chunks)."""
    return TorchEngine(lm, kv_bits=bits, kv_group_size=group_size, chunk=256, name=f"kv{bits}")


def mlp_zeroed(lm, block: int = 1):
    """One block's MLP output projection zeroed: that block's MLP contributes nothing."""
    out = copy.deepcopy(lm)
    with torch.no_grad():
        out.arch.linear(out.arch.blocks(out.model)[block], "mlp_out").weight.zero_()
    return out


def sharpened(lm, temperature: float = 0.5):
    """Logits divided by ``temperature`` (final norm scaled): same argmax, over-confident."""
    out = copy.deepcopy(lm)
    with torch.no_grad():
        out.model.get_submodule(out.arch.final_norm).weight.div_(temperature)
    return out


def shifted_domain_damage(lm, top: int = 400, scale: float = 0.0):
    """Embedding rows of the tokens far more frequent in Shakespeare than in python-docs scaled by
    ``scale`` (tied head included): the shifted domain breaks, the home domain barely moves."""
    out = copy.deepcopy(lm)
    tok = lm.tokenizer
    home = Counter(tok(text_part("python-docs", "fit")[:400_000])["input_ids"])
    away = Counter(tok(text_part("shakespeare", "fit")[:400_000])["input_ids"])
    n_home, n_away = sum(home.values()), sum(away.values())
    ratio = {t: (c / n_away) / ((home.get(t, 0) + 1) / n_home) for t, c in away.items() if c >= 5}
    worst = sorted(ratio, key=ratio.get, reverse=True)[:top]
    emb = out.model.get_submodule(out.arch.embed).weight
    with torch.no_grad():
        emb[torch.tensor(worst)] *= scale
    return out
