"""Cascade serving: the small model answers while it is confident; when its confidence drops,
a trustworthy (larger) model decides instead, and every decision is logged.

Two granularities. ``token``: each next token comes from the small model unless its confidence
is below the threshold, in which case the large model picks it (its KV cache is brought up to
date lazily, only when it is asked). ``sequence``: the small model drafts the whole answer; if
its mean confidence is below the threshold the large model regenerates it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from slimline.errors import ConfigError
from slimline.models.kv import cache_of, with_cache
from slimline.models.load import LoadedModel


class CascadeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="minimum confidence to keep the small model's choice"
    )
    confidence: Literal["max_prob", "margin", "entropy"] = "max_prob"
    granularity: Literal["token", "sequence"] = "token"
    max_new_tokens: int = Field(32, ge=1)


@dataclass
class Decision:
    step: int
    source: str  # "small" | "large"
    confidence: float
    token: int


@dataclass
class CascadeResult:
    tokens: list[int]
    text: str
    decisions: list[Decision] = field(default_factory=list)

    @property
    def fallback_rate(self) -> float:
        if not self.decisions:
            return 0.0
        return sum(d.source == "large" for d in self.decisions) / len(self.decisions)


def confidence(logits: torch.Tensor, kind: str) -> float:
    """A score in [0, 1] where higher means the model is surer of its top choice."""
    p = torch.softmax(logits.float(), dim=-1)
    if kind == "max_prob":
        return p.max().item()
    if kind == "margin":
        top = p.topk(2).values
        return (top[0] - top[1]).item()
    ent = -(p * p.clamp_min(1e-12).log()).sum()
    return float(1.0 - ent / torch.log(torch.tensor(float(p.numel()))))


class _Stream:
    """Greedy decoding state of one model with its KV cache; fed lazily."""

    def __init__(self, model: torch.nn.Module, prompt: torch.Tensor):
        self.model = model
        self.cache: Any = None
        self.fed = 0
        self.seq = prompt

    @torch.no_grad()
    def next_logits(self, seq: torch.Tensor) -> torch.Tensor:
        new = seq[:, self.fed :]
        out = self.model(input_ids=new, **with_cache(self.model, self.cache), use_cache=True)
        self.cache = cache_of(out)
        self.fed = seq.shape[1]
        return out.logits[0, -1]


class Cascade:
    """Serve ``small`` with a confidence-gated fallback to ``large``."""

    def __init__(
        self,
        small: LoadedModel,
        large: LoadedModel,
        config: CascadeConfig | None = None,
        log_path: str | Path | None = None,
    ):
        if small.kind != "causal-lm" or large.kind != "causal-lm":
            raise ConfigError(
                "a cascade needs two causal language models", "pass generative models, not encoders"
            )
        if small.tokenizer.get_vocab() != large.tokenizer.get_vocab():
            raise ConfigError(
                "the small and large models use different tokenizers, so one cannot continue the other's tokens",
                "cascade a compressed model with its own teacher or parent",
            )
        self.small, self.large = small, large
        self.config = config or CascadeConfig()
        self.log_path = Path(log_path) if log_path else None

    def _log(self, prompt: str, result: CascadeResult, seconds: float) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        row = {
            "time": time.time(),
            "prompt": prompt,
            "config": self.config.model_dump(),
            "fallback_rate": result.fallback_rate,
            "seconds": seconds,
            "decisions": [asdict(d) for d in result.decisions],
        }
        with self.log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def generate(self, prompt: str) -> CascadeResult:
        t0 = time.perf_counter()
        tok = self.small.tokenizer
        ids = tok(prompt, return_tensors="pt").input_ids
        if self.config.granularity == "token":
            result = self._token_level(ids)
        else:
            result = self._sequence_level(ids)
        result.text = tok.decode(result.tokens, skip_special_tokens=True)
        self._log(prompt, result, time.perf_counter() - t0)
        return result

    def _token_level(self, ids: torch.Tensor) -> CascadeResult:
        cfg = self.config
        small, large = _Stream(self.small.model, ids), _Stream(self.large.model, ids)
        seq, out, decisions = ids, [], []
        eos = self.small.tokenizer.eos_token_id
        for step in range(cfg.max_new_tokens):
            logits = small.next_logits(seq)
            conf = confidence(logits, cfg.confidence)
            source = "small"
            if conf < cfg.threshold:
                logits = large.next_logits(seq)
                source = "large"
            nxt = int(logits.argmax())
            decisions.append(Decision(step, source, conf, nxt))
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
            if nxt == eos:
                break
        return CascadeResult(out, "", decisions)

    def _greedy(self, stream: _Stream, ids: torch.Tensor) -> tuple[list[int], list[float]]:
        seq, out, confs = ids, [], []
        eos = self.small.tokenizer.eos_token_id
        for _ in range(self.config.max_new_tokens):
            logits = stream.next_logits(seq)
            confs.append(confidence(logits, self.config.confidence))
            nxt = int(logits.argmax())
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
            if nxt == eos:
                break
        return out, confs

    def _sequence_level(self, ids: torch.Tensor) -> CascadeResult:
        draft, confs = self._greedy(_Stream(self.small.model, ids), ids)
        mean = sum(confs) / len(confs)
        if mean >= self.config.threshold:
            return CascadeResult(draft, "", [Decision(0, "small", mean, draft[0] if draft else -1)])
        final, _ = self._greedy(_Stream(self.large.model, ids), ids)
        return CascadeResult(final, "", [Decision(0, "large", mean, final[0] if final else -1)])
