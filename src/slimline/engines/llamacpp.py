"""llama.cpp (through llama-cpp-python) on a GGUF file: our CPU serving engine.

Two contexts over one memory-mapped file: one with ``logits_all=True`` for per-position logits
(perplexity, KL, agreement), one without for timing — computing the vocabulary projection at
every prefill position would cost the 512-token prefill several GFLOPs it never pays in serving.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimline.engines.base import Engine, require
from slimline.errors import EngineError, InputError

GGUF_MAGIC = b"GGUF"
# ggml types of the KV cache: f16 is llama.cpp's default (what serving uses); f32 takes the
# cache's rounding out when the question is whether a conversion is right
KV_TYPES = {"f16": 1, "f32": 0}


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"no GGUF file at {path}", "export one: slimline export MODEL -o FILE")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise EngineError(
            f"{path} is not a GGUF file (it starts with {head!r}, not b'GGUF')",
            "re-export it: slimline export MODEL --format gguf -o FILE",
        )


def _amx_build(llama_cpp: Any) -> bool:
    """True when this llama.cpp build runs AMX kernels: its ``ggml_backend_amx_mul_mat`` crashed
    (SIGSEGV) on every quantized model on our AMX machine, llama.cpp's own files included."""
    return "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace")


@contextmanager
def _model_params(llama_cpp: Any, **fields: Any) -> Iterator[None]:
    # llama-cpp-python's Llama() builds llama_model_params itself and passes no extra fields
    # through: set them on the defaults it starts from, for this one construction
    mod = llama_cpp.llama_cpp
    orig = mod.llama_model_default_params

    def patched() -> Any:
        p = orig()
        for k, v in fields.items():
            setattr(p, k, v)
        return p

    mod.llama_model_default_params = patched
    try:
        yield
    finally:
        mod.llama_model_default_params = orig


class LlamaCppEngine(Engine):
    """A GGUF model in llama.cpp, ``threads`` CPU threads for prompt and decode alike."""

    name = "llamacpp"

    def __init__(
        self,
        path: str | os.PathLike[str],
        threads: int = 2,
        n_ctx: int = 1024,
        kv_cache: str = "f16",
        extra_buffers: bool | None = None,
    ):
        super().__init__(threads)
        if kv_cache not in KV_TYPES:
            raise InputError(
                f"unknown KV cache type {kv_cache!r}", f"use one of {', '.join(KV_TYPES)}"
            )
        self.kv_cache = kv_cache
        self._llama_cpp = require("llama_cpp", "llamacpp")
        self.path = Path(path)
        _check_file(self.path)
        self.n_ctx = n_ctx
        self.extra_buffers = (
            (not _amx_build(self._llama_cpp)) if extra_buffers is None else extra_buffers
        )
        self._ctx: dict[bool, Any] = {}
        self._context(False)  # load now, so a broken file fails here with its name

    def _context(self, logits_all: bool) -> Any:
        if logits_all not in self._ctx:
            try:
                with _model_params(self._llama_cpp, use_extra_bufts=self.extra_buffers):
                    self._ctx[logits_all] = self._llama_cpp.Llama(
                        model_path=str(self.path),
                        n_ctx=self.n_ctx,
                        n_batch=min(self.n_ctx, 512),
                        n_threads=self.threads,
                        n_threads_batch=self.threads,
                        logits_all=logits_all,
                        type_k=KV_TYPES[self.kv_cache],
                        type_v=KV_TYPES[self.kv_cache],
                        verbose=False,
                    )
            except (ValueError, RuntimeError, OSError) as e:
                raise EngineError(
                    f"llama.cpp cannot load {self.path}: {e}",
                    "the file is damaged or not a llama.cpp model; re-export it with "
                    "slimline export MODEL --format gguf -o FILE",
                ) from e
        return self._ctx[logits_all]

    @property
    def version(self) -> str:
        return str(self._llama_cpp.__version__)

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "kv_cache": self.kv_cache,
            "extra_buffers": self.extra_buffers,
        }

    @property
    def vocab_size(self) -> int:
        return int(self._context(False).n_vocab())

    def _fits(self, n: int) -> None:
        if n > self.n_ctx:
            raise InputError(
                f"{n} tokens do not fit the llama.cpp context of {self.n_ctx}",
                f"open the engine with n_ctx >= {n}",
            )

    def window_logits(self, ids: list[int]) -> torch.Tensor:
        self._fits(len(ids))
        llm = self._context(True)
        llm.reset()
        llm.eval(ids)
        return torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))

    def prefill(self, ids: list[int]) -> None:
        self._fits(len(ids))
        llm = self._context(False)
        llm.reset()
        llm.eval(ids)

    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        self._fits(len(prompt) + new_tokens)
        llm = self._context(False)
        n_vocab = self.vocab_size
        get = self._llama_cpp.llama_get_logits_ith

        def last() -> int:
            # without logits_all, llama-cpp-python keeps no scores: read the context's last row
            row = np.ctypeslib.as_array(get(llm.ctx, -1), shape=(n_vocab,))
            return int(np.argmax(row))

        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        nxt = last()
        t1 = time.perf_counter()
        out = [nxt]
        for _ in range(new_tokens - 1):
            llm.eval([nxt])
            nxt = last()
            out.append(nxt)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, out

    def bytes_per_token(self) -> int:
        from slimline.engines.bound import gguf_bytes_per_token

        return gguf_bytes_per_token(self.path)

    def close(self) -> None:
        for llm in self._ctx.values():
            llm.close()
        self._ctx.clear()
        super().close()
