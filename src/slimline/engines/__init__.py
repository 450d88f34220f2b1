"""Where a model runs: ``load_engine("torch" | "llamacpp" | "onnxruntime", model)`` gives an
``Engine`` with per-position logits, greedy generation with a KV cache, and ``measure()``
(prefill ms, decode tok/s, peak RSS, with engine name, version and threads recorded).

A model is compressed to be deployed; its speed and quality count where it will run. torch is
the reference; llama.cpp runs GGUF files and ONNX Runtime ONNX graphs (a torch model is exported
first, its quantized grids kept exactly). An engine that is not installed raises ``EngineError``
with the install command.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from slimline.engines.base import INSTALL, Engine, require
from slimline.errors import ConfigError

ENGINES = ("torch", "llamacpp", "onnxruntime")


def is_gguf(model: Any) -> bool:
    return isinstance(model, str | os.PathLike) and Path(model).suffix.lower() == ".gguf"


def load_engine(
    name: str,
    model: Any,
    *,
    threads: int = 2,
    tokenizer: Any = None,
    n_ctx: int = 1024,
    qtype: str | None = None,
) -> Engine:
    """``model`` in engine ``name``: a GGUF path for llama.cpp, an ``.onnx`` file (or a directory
    holding ``model.onnx``) for onnxruntime, or anything ``load_model`` takes (a torch model is
    exported to a temporary file — quantized grids exactly; for GGUF dense weights at ``qtype``,
    default f32 — verified in the engine, and removed on ``close()``)."""
    if name == "torch":
        from slimline.engines.torch_engine import TorchEngine

        if is_gguf(model):
            from slimline.models import load_model

            model = load_model(model)
        return TorchEngine(model, threads, tokenizer)
    if name == "llamacpp":
        from slimline.engines.llamacpp import LlamaCppEngine

        require("llama_cpp", "llamacpp")
        if is_gguf(model):
            return LlamaCppEngine(model, threads, n_ctx)
        from slimline.export import export_gguf
        from slimline.profile._resolve import resolve

        lm = resolve(model, tokenizer)
        tmp = tempfile.TemporaryDirectory(prefix="slimline-engine-")
        try:
            path = Path(tmp.name) / "model.gguf"
            export_gguf(lm.model, lm.tokenizer, path, qtype=qtype or "f32", threads=threads)
            eng = LlamaCppEngine(path, threads, n_ctx)
        except BaseException:
            tmp.cleanup()
            raise
        eng._owned.append(tmp)
        return eng
    if name == "onnxruntime":
        return _onnxruntime(model, threads, tokenizer, qtype)
    if name in INSTALL:
        raise ConfigError(f"slimline has no {name} engine yet", f"use one of: {', '.join(ENGINES)}")
    raise ConfigError(f"unknown engine {name!r}", f"use one of: {', '.join(ENGINES)}")


def _onnxruntime(model: Any, threads: int, tokenizer: Any, qtype: str | None) -> Engine:
    from slimline.engines.onnxruntime_engine import OnnxRuntimeEngine, onnx_file

    require("onnxruntime", "onnxruntime")
    if qtype not in (None, "f32"):
        raise ConfigError(
            f"the onnxruntime engine keeps dense weights in f32 (got qtype {qtype!r})",
            "drop qtype; quantize the model itself (slimline quantize) for MatMulNBits layers",
        )
    if isinstance(model, str | os.PathLike) and onnx_file(model) is not None:
        return OnnxRuntimeEngine(onnx_file(model), threads)
    from slimline.export.onnx_export import export_onnx
    from slimline.profile._resolve import resolve

    lm = resolve(model, tokenizer)
    if lm.kind != "causal-lm":
        raise ConfigError(
            f"the engine interface runs causal LMs; {lm.source} is an {lm.kind}",
            "export encoders with slimline export MODEL --format onnx and run them with "
            "slimline.engines.onnxruntime_engine.OnnxEncoder",
        )
    tmp = tempfile.TemporaryDirectory(prefix="slimline-engine-")
    try:
        path = Path(tmp.name) / "model.onnx"
        export_onnx(lm.model, lm.tokenizer, path, threads=threads)
        eng = OnnxRuntimeEngine(path, threads)
    except BaseException:
        tmp.cleanup()
        raise
    eng._owned.append(tmp)
    return eng


__all__ = ["ENGINES", "Engine", "is_gguf", "load_engine", "require"]
