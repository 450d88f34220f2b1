"""Noise robustness: how much worse the model predicts clean text after a noisy prefix.

Each passage is a prefix and the clean text that follows it. The prefix gets one kind of noise
(typos, casing, whitespace, punctuation; seeded) and we measure the rise in NLL (nats/token) of
the clean continuation: ``noise/<kind>``. The reference suffers some drop too; gates compare the
model's drop with the reference's, so only robustness lost to compression counts.
"""

from __future__ import annotations

import random
import re
import string
import zlib

import torch

from slimline.data import text_part
from slimline.eval.engine import LogitsEngine
from slimline.eval.tasks import TaskConfig, TaskContext, TaskResult, register_task

KINDS = ("typos", "casing", "whitespace", "punctuation")
_WORD = re.compile(r"\S+\s*")


class Noise(TaskConfig):
    """``noise/<kind>``: NLL rise of the clean continuation after a perturbed prefix."""

    name = "noise"
    source: str = "python-docs"
    kinds: tuple[str, ...] = KINDS
    n: int = 8
    prefix_words: int = 48
    target_words: int = 12
    rate: float = 0.25
    seed: int = 0


def _typo(w: str, rng: random.Random) -> str:
    letters = [i for i, c in enumerate(w) if c.isalpha()]
    if len(letters) < 3:
        return w
    i = rng.choice(letters[:-1])
    op = rng.randrange(3)
    if op == 0:  # swap neighbours
        return w[:i] + w[i + 1] + w[i] + w[i + 2 :]
    if op == 1:  # drop
        return w[:i] + w[i + 1 :]
    return w[:i] + w[i] + w[i:]  # double


def perturb(text: str, kind: str, rate: float, rng: random.Random) -> str:
    """``text`` with about ``rate`` of its words (or marks) perturbed by ``kind``."""
    if kind == "typos":
        return "".join(_typo(w, rng) if rng.random() < rate else w for w in _WORD.findall(text))
    if kind == "casing":
        out = []
        for w in _WORD.findall(text):
            if rng.random() < rate:
                w = rng.choice([str.upper, str.lower, str.title])(w)
            out.append(w)
        return "".join(out)
    if kind == "whitespace":
        return re.sub(
            r"\s+",
            lambda m: rng.choice(["  ", "\n", " \t", ""]) if rng.random() < rate else m.group(),
            text,
        )
    if kind == "punctuation":
        return "".join(
            "" if c in string.punctuation and rng.random() < 2 * rate else c for c in text
        )
    raise ValueError(kind)


def _passages(cfg: Noise, n: int) -> list[tuple[str, str]]:
    words = _WORD.findall(text_part(cfg.source, "eval"))
    rng = random.Random(cfg.seed * 1_000_003 + zlib.crc32(cfg.source.encode()))
    span = cfg.prefix_words + cfg.target_words
    out = []
    while len(out) < n:
        i = rng.randrange(0, len(words) - span)
        prefix = "".join(words[i : i + cfg.prefix_words])
        target = "".join(words[i + cfg.prefix_words : i + span]).rstrip()
        if len(prefix) + len(target) < 1200:
            out.append((prefix.rstrip(), prefix[len(prefix.rstrip()) :] + target))
    return out


def _target_nll(engine: LogitsEngine, pairs: list[tuple[str, str]]) -> float:
    tok = engine.tokenizer
    windows, spans = [], []
    for prefix, target in pairs:
        p = tok(prefix, add_special_tokens=False)["input_ids"]
        t = tok(target, add_special_tokens=False)["input_ids"]
        windows.append(torch.tensor(p + t))
        spans.append((len(p), len(t)))
    nll, n = 0.0, 0
    for lg, w, (lp_, lt) in zip(engine.logits(windows), windows, spans, strict=True):
        lp = torch.log_softmax(lg[lp_ - 1 : lp_ + lt - 1], -1)
        nll -= float(lp.gather(-1, w[lp_ : lp_ + lt, None]).sum())
        n += lt
    return nll / n


@register_task(Noise)
def run_noise(cfg: Noise, ctx: TaskContext) -> TaskResult:
    res = TaskResult()
    clean = _passages(cfg, ctx.n(cfg.n))
    noisy = {}
    for kind in cfg.kinds:
        rng = random.Random(cfg.seed * 7919 + zlib.crc32(kind.encode()))
        noisy[kind] = [(perturb(p, kind, cfg.rate, rng), t) for p, t in clean]

    def drops(e: LogitsEngine) -> dict[str, float]:
        base = _target_nll(e, clean)
        return {f"noise/{k}": _target_nll(e, v) - base for k, v in noisy.items()}

    for name, e in ctx.engines():
        out = res.metrics if name == "model" else res.reference
        out.update(ctx.cached(("noise", e, cfg, len(clean)), lambda e=e: drops(e)))
    return res
