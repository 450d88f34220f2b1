"""A recipe's ``export:`` list: engine files made from the final artifact, verified in their
engine, measured there beside the baseline, and kept as signed child artifacts.

A model is compressed to be served; the file the engine runs is the product, so it gets what the
artifact gets: a digest, a signature, a parent (the artifact it came from) and a registry
version. Quality is measured inside the engine on the recipe's own eval windows — the numbers a
user of that engine will see — beside the baseline exported at full precision to the same
engine, so the ratio is the compression's alone.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from slimline.recipe.schema import EXPORT_ENGINES, Export

EXPORTS_DIR = "exports"


def _file_name(fmt: str) -> str:
    return {"gguf": "model.gguf", "onnx": "model.onnx"}[fmt]


def _export(fmt: str, lm: Any, path: Path, spec: Export, name: str) -> dict[str, Any]:
    """Write and verify one engine file at ``path``; returns its export record."""
    if fmt == "gguf":
        from slimline.export import export_gguf

        return export_gguf(
            lm.model,
            lm.tokenizer,
            path,
            qtype=spec.qtype,
            embed_type=spec.embed_type,
            threads=spec.threads,
            name=name,
        ).record
    if fmt == "onnx":
        from slimline.export import export_onnx

        return export_onnx(lm.model, lm.tokenizer, path, threads=spec.threads).record
    raise AssertionError(fmt)  # the schema admits only EXPORT_FORMATS


@torch.inference_mode()
def engine_quality(
    path: Path,
    fmt: str,
    eval_sets: dict[str, torch.Tensor],
    teacher: Any | None,
    threads: int,
) -> dict[str, Any]:
    """``ppl/<ds>`` of the file in its engine on each eval set and, given the teacher (a torch
    model), ``kl/teacher`` and ``agree/top1`` against it (pooled and per dataset)."""
    from slimline.engines import load_engine
    from slimline.export.verify import compare_logits

    out: dict[str, Any] = {}
    kls, agrees, weights = [], [], []
    n_ctx = max(int(w.shape[1]) for w in eval_sets.values())
    with load_engine(EXPORT_ENGINES[fmt], path, threads=threads, n_ctx=n_ctx) as eng:
        out["engine"] = eng.describe()
        for ds, windows in eval_sets.items():
            nll, n, kl, agree = 0.0, 0, 0.0, 0.0
            for row in windows:
                got = eng.window_logits(row.tolist())
                lp = torch.log_softmax(got[:-1].double(), -1)
                nll -= float(lp.gather(-1, row[1:, None]).sum())
                n += row.numel() - 1
                if teacher is not None:
                    ref = teacher.model(input_ids=row[None], use_cache=False).logits[0].float()
                    c = compare_logits(ref[None], got[None])
                    kl += c["kl"] * row.numel()
                    agree += c["agree/top1"] * row.numel()
            out[f"ppl/{ds}"] = math.exp(nll / n)
            if teacher is not None:
                tokens = windows.numel()
                out[f"kl/teacher/{ds}"] = kl / tokens
                out[f"agree/top1/{ds}"] = agree / tokens
                kls.append(kl)
                agrees.append(agree)
                weights.append(tokens)
    if weights:
        out["kl/teacher"] = sum(kls) / sum(weights)
        out["agree/top1"] = sum(agrees) / sum(weights)
    return out


def _baseline_quality(run: Any, fmt: str, teacher: Any, spec: Export) -> dict[str, Any]:
    """The baseline's quality in the same engine (exported at full precision), once per run."""
    cache = run.state["baseline"].setdefault("engine_quality", {})
    if fmt not in cache:
        with tempfile.TemporaryDirectory(prefix=".export-baseline-", dir=run.dir) as tmp:
            f = Path(tmp) / _file_name(fmt)
            base_spec = spec.model_copy(update={"qtype": "f32", "embed_type": "f32"})
            rec = _export(fmt, teacher, f, base_spec, f"{run.recipe.name}-baseline")
            q = engine_quality(f, fmt, run.eval_sets, teacher, spec.threads)
            q["bytes"] = rec["bytes"]
        q.pop("engine", None)
        cache[fmt] = q
        run.save_state()
    return cache[fmt]


def run_exports(run: Any, lm: Any, teacher: Any, art: Any, home: Any) -> list[dict[str, Any]]:
    """Make every export of ``run.recipe`` from the final model ``lm`` (saved as ``art``, an
    ``ArtifactInfo``), each into ``RUN_DIR/exports/<format>/`` as a signed artifact whose parent
    is ``art``. An export already made from this same artifact with the same settings is kept
    (a resumed run does not redo it). Returns the records, also kept in the run state."""
    from slimline.artifact.io import save_export_artifact
    from slimline.artifact.spec import is_artifact

    done: dict[str, Any] = run.state.setdefault("exports", {})
    out = []
    for spec in run.recipe.export:
        fmt, settings = spec.format, spec.model_dump(mode="json")
        dest = run.dir / EXPORTS_DIR / fmt
        prev = done.get(fmt)
        if (
            prev
            and prev["settings"] == settings
            and prev["parent"] == art.digest
            and is_artifact(dest)
        ):
            out.append(prev)
            continue
        with tempfile.TemporaryDirectory(prefix=f".export-{fmt}-", dir=run.dir) as tmp:
            f = Path(tmp) / _file_name(fmt)
            rec = _export(fmt, lm, f, spec, run.recipe.name)
            metrics: dict[str, Any] = {}
            if spec.evaluate and run.eval_sets:
                metrics = engine_quality(f, fmt, run.eval_sets, teacher, spec.threads)
                base = _baseline_quality(run, fmt, teacher, spec)
                for k, v in list(metrics.items()):
                    if k.startswith("ppl/") and isinstance(base.get(k), float):
                        metrics[f"{k}/vs_baseline"] = v / base[k]
            engine = metrics.pop("engine", None) or rec.get("verify", {}).get("engine")
            info = save_export_artifact(
                {p.name: p for p in sorted(Path(tmp).iterdir()) if p.is_file()},
                dest,
                fmt=fmt,
                manifest={
                    "name": f"{run.recipe.name}-{fmt}",
                    "engine": engine,
                    "export": {
                        "settings": settings,
                        "type_counts": rec.get("type_counts"),
                        "exact_tensors": len(rec.get("exact", [])),
                        "requantized": sorted(rec.get("requantized", {})),
                        "verify": rec.get("verify"),
                    },
                    "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)},
                },
                parent=art.digest,
                overwrite=True,
                home=home,
            )
        entry = {
            "format": fmt,
            "engine": engine,
            "settings": settings,
            "parent": art.digest,
            "digest": info.digest,
            "path": f"{EXPORTS_DIR}/{fmt}",
            "file": f.name,
            "bytes": rec["bytes"],
            "type_counts": rec.get("type_counts"),
            "verify": _verify_summary(rec.get("verify") or {}),
            "metrics": metrics,
            "baseline_metrics": run.state["baseline"].get("engine_quality", {}).get(fmt, {}),
        }
        done[fmt] = entry
        run.save_state()
        out.append(entry)
    return out


def _verify_summary(v: dict[str, Any]) -> dict[str, Any]:
    """What the report shows of the in-engine check: the same-weights agreement it is gated on."""
    same = v.get("same_weights") or {}
    return {
        "verified": bool(v.get("verified")),
        "kl": same.get("kl"),
        "agree/top1": same.get("agree/top1"),
        "max_abs_logit_diff": same.get("max_abs_logit_diff"),
        "windows": v.get("windows"),
        "seq_len": v.get("seq_len"),
    }
