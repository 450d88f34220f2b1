"""``profile_engine``: what ``slimline profile --engine`` measures on an engine other than torch.

The same protocol and metric names as ``slimline.profile.profile`` (latency/prefill_ms,
latency/decode_tok_s, memory/peak_mb), with the engine, its version and threads in ``env`` and
the bytes of the file the engine ran.
"""

from __future__ import annotations

import os
from typing import Any

from slimline.engines import is_gguf, load_engine


def _is_onnx(model: Any) -> bool:
    from slimline.engines.onnxruntime_engine import onnx_file

    return isinstance(model, str | os.PathLike) and onnx_file(model) is not None


def profile_engine(
    model: Any,
    engine: str,
    *,
    threads: int = 2,
    seq_len: int = 512,
    prompt_len: int = 32,
    new_tokens: int = 64,
    repeats: int = 5,
    warmup: int = 1,
    qtype: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Load ``model`` in ``engine`` (a torch model is exported first — GGUF for llamacpp, ONNX
    for onnxruntime — its grids kept) and run ``Engine.measure``; returns a JSON-ready dict."""
    n_ctx = max(seq_len, prompt_len + new_tokens)
    eng = load_engine(engine, model, threads=threads, n_ctx=n_ctx, qtype=qtype)
    try:
        res = eng.measure(
            seq_len=seq_len,
            prompt_len=prompt_len,
            new_tokens=new_tokens,
            repeats=repeats,
            warmup=warmup,
            seed=seed,
        )
        path = getattr(eng, "path", None)
        if path is not None:
            res["metrics"]["size/bytes"] = os.path.getsize(path)
            given = is_gguf(model) or _is_onnx(model)
            res["file"] = str(model) if given else f"temporary {engine} export"
        res["metrics"].update(_bound(eng, res["metrics"]))
    finally:
        eng.close()
    return {"model": str(getattr(model, "source", model)), **res}


def profile_engines_paired(
    models: list[Any],
    engine: str,
    *,
    rounds: int = 5,
    threads: int = 2,
    seq_len: int = 512,
    prompt_len: int = 32,
    new_tokens: int = 64,
    qtype: str | None = None,
) -> list[dict[str, Any]]:
    """``profile_engine`` for several models on one engine, their timed runs interleaved A B A B
    (one run each per round, a warm-up in the first), so a load change on a shared machine hits
    all alike and their ratios stay fair (BENCH.md). Each gets its median over the rounds."""
    from slimline.profile.api import _timing_metrics

    n_ctx = max(seq_len, prompt_len + new_tokens)
    engines = []
    try:
        for m in models:
            engines.append(load_engine(engine, m, threads=threads, n_ctx=n_ctx, qtype=qtype))
        runs: list[list[dict[str, Any]]] = [[] for _ in engines]
        for r in range(rounds):
            for i, eng in enumerate(engines):
                runs[i].append(
                    eng.measure(
                        seq_len=seq_len,
                        prompt_len=prompt_len,
                        new_tokens=new_tokens,
                        repeats=1,
                        warmup=1 if r == 0 else 0,
                    )
                )
        out = []
        for eng, rs, m in zip(engines, runs, models, strict=True):
            timings: dict[str, list[float]] = {}
            for x in rs:
                for k, v in x["timings"].items():
                    timings.setdefault(k, []).extend(v)
            metrics = _timing_metrics(timings, seq_len)
            for k in ("memory/peak_mb", "memory/process_peak_mb"):
                metrics[k] = max(x["metrics"][k] for x in rs)
            metrics["memory/start_mb"] = min(x["metrics"]["memory/start_mb"] for x in rs)
            path = getattr(eng, "path", None)
            if path is not None:
                metrics["size/bytes"] = os.path.getsize(path)
            metrics.update(_bound(eng, metrics))
            settings = {**rs[0]["settings"], "repeats": rounds, "interleaved_models": len(models)}
            out.append(
                {
                    "model": str(getattr(m, "source", m)),
                    "metrics": metrics,
                    "timings": timings,
                    "env": rs[0]["env"],
                    "settings": settings,
                }
            )
        return out
    finally:
        for eng in engines:
            eng.close()


def _bound(eng: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """The bandwidth bound beside the measured decode (empty when the engine cannot say what
    a token reads)."""
    from slimline.engines.bound import bound_metrics

    n = eng.bytes_per_token()
    return {} if not n else bound_metrics(n, eng.threads, metrics.get("latency/decode_tok_s"))
