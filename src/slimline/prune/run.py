"""Prune a model end to end (load, calibrate, prune, save): the library behind ``slimline prune``."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from slimline.core import Context, TechniqueConfig
from slimline.errors import ConfigError, InputError

METHODS = {"magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGpt"}


def parse_structured(spec: str | None) -> list[TechniqueConfig]:
    """``"heads=0.25,mlp=0.3,blocks=4"`` -> [PruneHeads, PruneMlp, PruneBlocks] (that order:
    blocks last, so their ranking sees the already-narrowed model)."""
    from slimline.prune.structured import PruneBlocks, PruneHeads, PruneMlp

    if not spec:
        return []
    found: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep or key not in ("heads", "mlp", "blocks") or key in found:
            raise ConfigError(
                f"structured spec {spec!r}: cannot read {part!r}",
                "use e.g. heads=0.25,mlp=0.3,blocks=4 (each at most once)",
            )
        found[key] = val
    out: list[TechniqueConfig] = []
    try:
        if "heads" in found:
            out.append(PruneHeads(amount=float(found["heads"])))
        if "mlp" in found:
            out.append(PruneMlp(amount=float(found["mlp"])))
        if "blocks" in found:
            out.append(PruneBlocks(remove=int(found["blocks"])))
    except ValueError as e:
        raise ConfigError(
            f"structured spec {spec!r}: {e}", "heads/mlp take fractions, blocks a count"
        ) from e
    return out


def prune_model(
    model: str,
    out: str | os.PathLike[str],
    *,
    method: str | None = None,
    sparsity: float | None = None,
    pattern: str | None = None,
    structured: str | None = None,
    calib: str = "python-docs",
    calib_samples: int = 128,
    seq_len: int = 512,
    ignore: list[str] | None = None,
    sparse_bits: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Load ``model``, apply the requested pruning, save to ``out``; returns a summary.

    Structured-only results are a plain HF directory (``save_pretrained``, loads in transformers
    as a smaller dense model) plus ``prune_log.json``; unstructured results become a slimline
    artifact whose pruned layers are ``SparseLinear`` (bitmask + non-zeros, optionally 4-bit).
    Every option is validated and ``out`` checked before the model is loaded.
    """
    import slimline.prune as P

    dest = Path(out)
    if dest.exists():
        raise InputError(f"{dest} already exists", "choose a new output directory")
    steps: list[TechniqueConfig] = parse_structured(structured)
    if sparsity is not None or pattern is not None or method is not None:
        name = METHODS.get(method or "wanda")
        if name is None:
            raise ConfigError(f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
        params: dict[str, Any] = {"ignore": ignore if ignore is not None else ["lm_head"]}
        if pattern is not None:
            params["pattern"] = pattern
        else:
            params["sparsity"] = 0.5 if sparsity is None else sparsity
        steps.append(getattr(P, name)(**params))
    if not steps:
        raise ConfigError(
            "nothing to prune",
            "give --sparsity, --pattern and/or --structured heads=..,mlp=..,blocks=..",
        )
    if calib_samples < 1 or seq_len < 8:
        raise ConfigError(
            "calibration needs at least 1 sample of 8 tokens", "raise --calib-samples"
        )

    from slimline.data import calibration_blocks
    from slimline.models import load_model

    lm = load_model(model)
    needs_data = any(s.kind not in ("prune.magnitude",) for s in steps)
    ids = (
        calibration_blocks(lm.tokenizer, calib, n=calib_samples, seq_len=seq_len, seed=seed)
        if needs_data
        else None
    )
    ctx = Context(tokenizer=lm.tokenizer, calib=ids, seed=seed)
    records = []
    t0 = time.perf_counter()
    for cfg in steps:
        records.append(P.prune(lm, cfg, ctx=ctx))
    seconds = time.perf_counter() - t0
    unstructured = any(isinstance(s, P.PruneConfig) for s in steps)
    summary: dict[str, Any] = {
        "model": model,
        "out": str(dest),
        "seconds": seconds,
        "stages": records,
        "params": sum(p.numel() for p in lm.model.parameters()),
    }
    if unstructured:
        from slimline.artifact import save_artifact

        summary["storage"] = P.to_sparse(lm.model, bits=sparse_bits)
        summary["format"] = "slimline-artifact (SparseLinear: bitmask + non-zeros)"
        info = save_artifact(
            lm, None, dest, manifest={"stages": records, "seed": seed, "recipe": None}
        )
        summary["size_bytes"] = info.size_bytes
    else:
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            lm.model.save_pretrained(tmp)
            if lm.tokenizer is not None:
                lm.tokenizer.save_pretrained(str(tmp))
            (tmp / "prune_log.json").write_text(
                json.dumps({"stages": records}, indent=2, default=str)
            )
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        summary["format"] = "hf (save_pretrained: a smaller dense model)"
        summary["size_bytes"] = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return summary
