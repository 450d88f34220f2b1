"""What the runner measures on the baseline and after each stage, named per DEVELOPING.md.

Quality comes from ``slimline.eval``: ``ppl/<dataset>`` (BENCH.md), ``bpb``, ``ece``, and against
the baseline as teacher ``kl/teacher`` and ``agree/top1`` (pooled, and per dataset when several). Cost comes from ``slimline.profile``:
``params/*``, ``flops/token``, ``latency/prefill_ms``, ``latency/decode_tok_s`` (median after a
warm-up, on the named engine and threads) and ``memory/peak_mb`` (see ``cost``). ``size/bytes`` is the checkpoint's bytes on disk, added by
the runner after it saves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimline.recipe.schema import EvalSuite, Latency


@torch.no_grad()
def quality(
    lm: Any, eval_sets: dict[str, torch.Tensor], suite: EvalSuite, teacher: Any | None = None
) -> dict[str, float]:
    """Quality metrics from ``slimline.eval.evaluate`` on the run's eval windows, kept to the
    suite's list; the teacher (the baseline) is the reference for ``kl/teacher``/``agree/top1``."""
    from slimline.eval import evaluate

    vs_teacher = any(m in suite.metrics for m in ("kl/teacher", "agree/top1", "ece"))
    first = next(iter(eval_sets.values()))
    m = evaluate(
        lm,
        data=eval_sets,
        reference=teacher if vs_teacher else None,
        windows=int(first.shape[0]),
        seq_len=int(first.shape[1]),
        suite="default" if vs_teacher else "ppl",
    )
    return {k: v for k, v in m.items() if k.startswith(tuple(suite.metrics))}


@torch.no_grad()
def suite(lm: Any, teacher: Any, cfg: EvalSuite, figures_dir: Path | None = None) -> dict[str, Any]:
    """The recipe's evaluation suite (``eval.suite``) on ``lm`` against the baseline ``teacher``:
    ``SuiteReport.to_dict()`` plus the extra ``eval.gates`` verdicts (each marked ``extra`` with
    its line) and the gate lines themselves. Judged once, on the final model."""
    from slimline.eval import check_gates, run_suite

    assert cfg.suite is not None
    r = run_suite(lm, suite=cfg.suite, reference=teacher, figures_dir=figures_dir)
    d = r.to_dict()
    for line in cfg.gates:
        verdicts, notes = check_gates([line], r.metrics, r.reference)
        d["verdicts"] += [{**v, "extra": line} for v in verdicts]
        d["skipped"] += notes
    d["gates"] = list(cfg.gates)
    d["passed"] = all(v["passed"] for v in d["verdicts"]) and all(
        any(v.get("extra") == line for v in d["verdicts"]) for line in cfg.gates
    )
    return d


def params(model: nn.Module) -> dict[str, float]:
    """Dense and non-zero parameter counts (``slimline.profile``: packed modules count logically)."""
    from slimline.profile.static import param_stats

    st = param_stats(model)
    return {"params/total": float(st.total), "params/nonzero": float(st.nonzero)}


def cost(lm: Any, cfg: Latency) -> dict[str, Any]:
    """Latency, memory and FLOPs from ``slimline.profile`` on the engine named in ``cfg``.

    ``memory/peak_mb`` here is what serving this model needs: its tensors plus the resident growth
    during the profile. The process also holds the baseline (teacher) and the data, so its own
    peak is kept apart as ``memory/process_peak_mb``. ``engine: llamacpp``: the model is exported
    to GGUF (grids kept exactly, verified) and measured in llama.cpp (``slimline.engines``).
    """
    if cfg.engine != "torch":
        return _engine_costs([lm], cfg)[0]
    from slimline.profile import profile

    m = _cost_metrics(profile(lm, repeats=cfg.repeats, breakdown=False, **_settings(cfg)), cfg)
    return _with_bound(m, lm, cfg)


def paired_cost(lm: Any, baseline: Any, cfg: Latency) -> tuple[dict[str, Any], dict[str, Any]]:
    """``cost`` of ``lm`` and of ``baseline`` timed interleaved (A B A B, ``profile_paired``), so a
    load change on a shared machine cannot make the compressed model look faster or slower than
    it is; the runner compares the final model with its baseline this way."""
    if cfg.engine != "torch":
        mine, theirs = _engine_costs([lm, baseline], cfg, paired=True)
        return mine, theirs
    from slimline.profile import profile_paired

    mine, theirs = profile_paired([lm, baseline], rounds=cfg.repeats, **_settings(cfg))
    return (
        _with_bound(_cost_metrics(mine, cfg, paired=True), lm, cfg),
        _with_bound(_cost_metrics(theirs, cfg, paired=True), baseline, cfg),
    )


def _with_bound(m: dict[str, Any], lm: Any, cfg: Latency) -> dict[str, Any]:
    """Torch's figures with the bandwidth bound beside them (engines add their own)."""
    from slimline.engines.bound import bound_metrics, model_bytes_per_token

    n = model_bytes_per_token(lm.model)
    return {**m, **bound_metrics(n, cfg.threads, m.get("latency/decode_tok_s"))}


def _engine_costs(models: list[Any], cfg: Latency, paired: bool = False) -> list[dict[str, Any]]:
    """Cost metrics on a non-torch engine (interleaved when several models), named as torch's:
    ``memory/peak_mb`` = the file the engine runs plus the resident growth while it runs."""
    from slimline.engines.profile import profile_engines_paired

    res = profile_engines_paired(models, cfg.engine, rounds=cfg.repeats, **_settings(cfg))
    out = []
    for r in res:
        m = dict(r["metrics"])
        size = m.pop("size/bytes", 0.0)  # the runner sets size/bytes from the checkpoint
        growth = _growth(m)
        m["memory/model_mb"] = size / 1e6
        m["memory/peak_mb"] = size / 1e6 + growth
        env = r["env"]
        m["latency/setup"] = _setup(
            cfg,
            env,
            paired,
            engine=cfg.engine,
            engine_name=env["engine"],
            engine_version=env["version"],
        )
        out.append(m)
    return out


def _settings(cfg: Latency) -> dict[str, Any]:
    return {
        "seq_len": cfg.prefill_tokens,
        "new_tokens": cfg.decode_tokens,
        "prompt_len": cfg.prompt_tokens,
        "threads": cfg.threads,
    }


def _cost_metrics(p: Any, cfg: Latency, paired: bool = False) -> dict[str, Any]:
    m = dict(p.metrics)
    m.pop("size/bytes", None)  # in-memory bytes; the runner sets size/bytes from disk
    m.pop("size/disk_bytes", None)
    growth = _growth(m)
    if "memory/model_mb" in m:
        m["memory/peak_mb"] = m["memory/model_mb"] + growth
    m["latency/setup"] = _setup(
        cfg,
        p.env,
        paired,
        engine="torch",
        engine_name=p.env.get("engine"),
        engine_version=torch.__version__,
    )
    return m


def _growth(m: dict[str, Any]) -> float:
    """Resident memory the profile added (MB): peak minus start, never negative."""
    return max(0.0, m.get("memory/peak_mb", 0.0) - m.get("memory/start_mb", 0.0))


def _setup(cfg: Latency, env: dict[str, Any], paired: bool, **engine: Any) -> dict[str, Any]:
    """``latency/setup``: the ``engine`` fields, then the settings and machine it was timed on."""
    return {
        **engine,
        "threads": cfg.threads,
        "prefill_tokens": cfg.prefill_tokens,
        "prompt_tokens": cfg.prompt_tokens,
        "decode_tokens": cfg.decode_tokens,
        "repeats": cfg.repeats,
        "paired_with_baseline": paired,
        "cpu": (env.get("machine") or {}).get("cpu"),
    }
