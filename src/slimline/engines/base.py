"""The one interface every engine implements: where a model runs, and how it is measured there.

An engine gives next-token logits for a batch of token windows (so perplexity, KL and agreement
run inside the engine), greedy generation with its KV cache, and ``measure()``: the BENCH.md
protocol (prefill of N tokens, greedy decode after a prompt, median of repeats after a warm-up,
peak RSS) with the engine's name, version and threads stated. The timing loop, the summary
statistics and the RSS sampler are ``slimline.profile.runtime``'s: written once, shared by all.
"""

from __future__ import annotations

import abc
import importlib
from types import ModuleType
from typing import Any, ClassVar

import torch

from slimline.errors import ConfigError, EngineError

INSTALL = {
    "llamacpp": (
        "pip install llama-cpp-python (it compiles llama.cpp: several minutes), "
        "or bash scripts/setup.sh"
    ),
    "onnxruntime": "pip install onnxruntime",
}


def require(module: str, engine: str) -> ModuleType:
    """Import an engine's package, or say which engine is missing and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise EngineError(
            f"the {engine} engine is not installed (cannot import {module}: {e})",
            INSTALL.get(engine, f"pip install {module}"),
        ) from e


class Engine(abc.ABC):
    """A model loaded in one engine. Subclasses implement the four primitives below."""

    name: ClassVar[str]

    def __init__(self, threads: int = 2):
        if threads < 1:
            raise ConfigError(f"threads must be at least 1 (got {threads})", "pass threads >= 1")
        self.threads = threads
        self._owned: list[Any] = []  # temp dirs (an export made for this engine), removed on close

    # --- what each engine provides ---------------------------------------------------------

    @property
    @abc.abstractmethod
    def version(self) -> str:
        """The engine library's version, recorded beside every number it produced."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def window_logits(self, ids: list[int]) -> torch.Tensor:
        """fp32 logits ``[T, V]`` at every position of one window (a fresh context)."""

    @abc.abstractmethod
    def prefill(self, ids: list[int]) -> None:
        """One forward over ``ids`` from an empty cache, keeping only what decoding needs."""

    @abc.abstractmethod
    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        """Greedy decode with the KV cache: (seconds for the prompt, seconds for the
        ``new_tokens - 1`` one-token steps, the new ids) — as ``profile.runtime.greedy_decode``."""

    def bytes_per_token(self) -> int | None:
        """Weight bytes one decoded token reads (``slimline.engines.bound``); None if unknown."""
        return None

    def close(self) -> None:
        """Free what the engine holds (native memory in subclasses; temp files here)."""
        for d in self._owned:
            d.cleanup()
        self._owned.clear()

    # --- shared on top -------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "version": self.version, "threads": self.threads}

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """fp32 logits ``[B, T, V]`` for a ``[B, T]`` batch of windows, each from a fresh cache."""
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ConfigError(
                f"logits need a [windows, tokens] batch of ids, got shape {tuple(ids.shape)}",
                "pass a 2-D LongTensor (e.g. slimline.data.eval_blocks)",
            )
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ConfigError(
                f"token ids must lie in 0..{self.vocab_size - 1} for this model",
                "tokenize with the model's own tokenizer",
            )
        return torch.stack([self.window_logits(row.tolist()) for row in ids])

    def generate(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``prompt`` (exactly ``max_new_tokens`` ids, no EOS stop)."""
        return self.greedy(list(prompt), max_new_tokens)[2]

    def measure(
        self,
        *,
        seq_len: int = 512,
        prompt_len: int = 32,
        new_tokens: int = 64,
        repeats: int = 5,
        warmup: int = 1,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Prefill ms at ``seq_len`` tokens, decode tok/s after a ``prompt_len`` prompt, peak RSS
        (BENCH.md protocol; seeded random ids — dense latency does not depend on the text)."""
        from slimline.profile.api import _timing_metrics
        from slimline.profile.runtime import MB, RssSampler, lifetime_peak_rss, machine, timed

        for what, v, least in (
            ("seq_len", seq_len, 1),
            ("prompt_len", prompt_len, 1),
            ("new_tokens", new_tokens, 2),
            ("repeats", repeats, 1),
            ("warmup", warmup, 0),
        ):
            if v < least:
                raise ConfigError(f"{what} must be at least {least} (got {v})", f"pass {least}+")
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.vocab_size, (seq_len,), generator=gen).tolist()
        prompt = torch.randint(0, self.vocab_size, (prompt_len,), generator=gen).tolist()
        timings: dict[str, list[float]] = {}
        with RssSampler() as rss:
            timings["prefill_ms"] = [
                1000 * s for s in timed(lambda: self.prefill(ids), repeats, warmup)
            ]
            for _ in range(warmup):
                self.greedy(prompt, new_tokens)
            steps, e2e = [], []
            for _ in range(repeats):
                t_prompt, t_steps, _ = self.greedy(prompt, new_tokens)
                steps.append((new_tokens - 1) / t_steps)
                e2e.append(new_tokens / (t_prompt + t_steps))
            timings["decode_tok_s"] = steps
            timings["generate_tok_s"] = e2e
        metrics = _timing_metrics(timings, seq_len)
        metrics["memory/peak_mb"] = rss.peak / MB
        metrics["memory/start_mb"] = rss.start / MB
        metrics["memory/process_peak_mb"] = lifetime_peak_rss() / MB
        return {
            "metrics": metrics,
            "timings": timings,
            "env": {**self.describe(), "batch": 1, "machine": machine()},
            "settings": {
                "seq_len": seq_len,
                "prompt_len": prompt_len,
                "new_tokens": new_tokens,
                "repeats": repeats,
                "warmup": warmup,
                "inputs": f"random token ids, seed {seed}",
            },
        }

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
