"""ONNX Runtime on a graph from ``export_onnx``: decoders with an explicit KV cache, encoders.

A decoder graph takes ``input_ids`` and ``past_key_values.N.key/value`` and returns ``logits``
and ``present.N.key/value``; the engine feeds each step's presents back as the next step's past
(an empty cache is a past of length 0). Sessions run ``threads`` intra-op threads, one inter-op
thread, ORT's default graph optimisations, and log errors only (ORT's warnings about the graph
it rewrites are not the user's business).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimline.engines.base import Engine, require
from slimline.errors import ConfigError, EngineError, InputError

_REEXPORT = "re-export it: slimline export MODEL --format onnx -o FILE"


def onnx_file(path: str | os.PathLike[str]) -> Path | None:
    """The ``.onnx`` file ``path`` names (a file, or a directory holding ``model.onnx``), else None."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return p
    if p.is_dir() and (p / "model.onnx").is_file():
        return p / "model.onnx"
    return None


def _session(path: Path, threads: int) -> Any:
    ort = require("onnxruntime", "onnxruntime")
    if threads < 1:
        raise ConfigError(f"threads must be at least 1 (got {threads})", "pass threads >= 1")
    if not path.is_file():
        raise InputError(
            f"no ONNX file at {path}", "export one: slimline export MODEL --format onnx -o FILE"
        )
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... classes
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngineError(f"ONNX Runtime cannot load {path}: {first}", _REEXPORT) from e


class _Session:
    """What both ONNX engines share: the session, its metadata, threads, version."""

    def _open(self, path: str | os.PathLike[str], threads: int, kind: str) -> None:
        self.path = Path(path)
        self._ort = require("onnxruntime", "onnxruntime")
        self.sess = _session(self.path, threads)
        meta = self.sess.get_modelmeta().custom_metadata_map
        got = meta.get("slimline.kind")
        if got is None:
            raise EngineError(
                f"{self.path} was not written by slimline's ONNX export (its inputs and outputs "
                "are not known)",
                _REEXPORT,
            )
        if got != kind:
            other = "slimline.engines.onnxruntime_engine.OnnxEncoder"
            raise EngineError(
                f"{self.path} holds a {got} graph, not a {kind}",
                f"open it with {other if got == 'encoder' else 'the onnxruntime engine'}",
            )
        self.family = meta.get("slimline.family", "?")
        self.max_positions = int(meta.get("slimline.max_positions", "0") or 0)
        self._bytes_per_token = int(meta.get("slimline.bytes_per_token", "0") or 0) or None

    @property
    def version(self) -> str:
        return str(self._ort.__version__)


class OnnxRuntimeEngine(_Session, Engine):
    """A causal LM graph in ONNX Runtime, ``threads`` intra-op threads."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], threads: int = 2):
        Engine.__init__(self, threads)
        self._open(path, threads, "causal-lm")
        past = [i for i in self.sess.get_inputs() if i.name.startswith("past_key_values.")]
        self._past = {i.name: (int(i.shape[1]), int(i.shape[3])) for i in past}
        self._present = [o.name for o in self.sess.get_outputs() if o.name.startswith("present.")]
        self._vocab = int(self.sess.get_outputs()[0].shape[2])

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "family": self.family}

    def bytes_per_token(self) -> int | None:
        """Weight bytes one decoded token reads, counted by the export (``engines.bound``)."""
        return self._bytes_per_token

    def _fits(self, n: int) -> None:
        if self.max_positions and n > self.max_positions:
            raise InputError(
                f"{n} tokens exceed this {self.family} model's {self.max_positions} positions",
                f"use at most {self.max_positions} tokens",
            )

    def _run(
        self, ids: list[int] | np.ndarray, past: dict[str, np.ndarray] | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        if past is None:
            past = {n: np.zeros((1, kv, 0, hd), np.float32) for n, (kv, hd) in self._past.items()}
        outs = self.sess.run(None, {"input_ids": x, **past})
        present = dict(zip(self._present, outs[1:], strict=True))
        return outs[0], {n.replace("present.", "past_key_values."): v for n, v in present.items()}

    def window_logits(self, ids: list[int]) -> torch.Tensor:
        self._fits(len(ids))
        return torch.from_numpy(self._run(ids, None)[0][0].astype(np.float32, copy=False))

    def prefill(self, ids: list[int]) -> None:
        self._fits(len(ids))
        self._run(ids, None)

    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[float, float, list[int]]:
        self._fits(len(prompt) + new_tokens)
        t0 = time.perf_counter()
        logits, past = self._run(prompt, None)
        nxt = int(logits[0, -1].argmax())
        t1 = time.perf_counter()
        out = [nxt]
        for _ in range(new_tokens - 1):
            logits, past = self._run([nxt], past)
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, out

    def close(self) -> None:
        self.sess = None
        super().close()


class OnnxEncoder(_Session):
    """An encoder graph (bert) in ONNX Runtime: hidden states and sentence embeddings."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], threads: int = 2):
        if threads < 1:
            raise ConfigError(f"threads must be at least 1 (got {threads})", "pass threads >= 1")
        self.threads = threads
        self._open(path, threads, "encoder")

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "version": self.version,
            "threads": self.threads,
            "family": self.family,
        }

    def run(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``last_hidden_state [B, T, C]`` and L2-normalised mean-pooled ``[B, C]`` (numpy)."""
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ConfigError(
                f"encode needs a [batch, tokens] batch of ids, got {tuple(ids.shape)}",
                "pass a 2-D LongTensor",
            )
        self._fits(int(ids.shape[1]))
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        feed = {
            "input_ids": ids.numpy().astype(np.int64),
            "attention_mask": mask.numpy().astype(np.int64),
        }
        h, e = self.sess.run(["last_hidden_state", "sentence_embedding"], feed)
        return h, e

    def encode(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence embeddings as ``slimline.models.embed`` makes them in torch."""
        return torch.from_numpy(self.run(ids, attention_mask)[1])

    def _fits(self, n: int) -> None:
        if self.max_positions and n > self.max_positions:
            raise InputError(
                f"{n} tokens exceed the encoder's {self.max_positions} positions",
                f"truncate to {self.max_positions}",
            )

    def close(self) -> None:
        self.sess = None

    def __enter__(self) -> OnnxEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
