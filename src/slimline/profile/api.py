"""``profile(model)``: static and runtime cost of a model in one record, with metric names."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from slimline.errors import ConfigError
from slimline.profile._resolve import resolve
from slimline.profile.runtime import (
    MB,
    Energy,
    RssSampler,
    greedy_decode,
    lifetime_peak_rss,
    machine,
    module_breakdown,
    summary,
    timed,
    torch_threads,
)
from slimline.profile.static import flops_per_token, param_stats, size_on_disk

ENGINE = "torch eager"


@dataclass
class Profile:
    """What a model costs. ``metrics`` uses the shared metric names; the rest is detail."""

    model: str
    kind: str
    metrics: dict[str, float]
    params: dict[str, Any]
    flops: dict[str, float]
    timings: dict[str, list[float]] = field(default_factory=dict)
    breakdown: dict[str, Any] | None = None
    energy: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def tables(self) -> list[Any]:
        """Rich tables: the metrics, bytes by dtype, and the per-role time breakdown."""
        from rich.table import Table

        env = self.env
        title = (
            f"{self.model} — {env.get('engine')}, {env.get('threads')} threads, "
            f"{env.get('machine', {}).get('cpu')}"
        )
        t = Table(title=title)
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in self.metrics.items():
            t.add_row(k, f"{v:,.4g}" if isinstance(v, float) else f"{v:,}")
        if not self.energy.get("available"):
            t.add_row("energy", f"not available: {self.energy.get('reason', '')}")
        out = [t]
        d = Table(title="stored bytes by dtype")
        for col in ("dtype", "tensors", "elements", "bytes"):
            d.add_column(col, justify="right" if col != "dtype" else "left")
        for dt, row in self.params.get("by_dtype", {}).items():
            d.add_row(dt, f"{row['tensors']:,}", f"{row['elements']:,}", f"{row['bytes']:,}")
        out.append(d)
        if self.breakdown:
            b = Table(
                title=f"time by role (prefill, hooks on; wall {self.breakdown['wall_ms']:.1f} ms)"
            )
            b.add_column("role")
            b.add_column("ms", justify="right")
            b.add_column("share", justify="right")
            total = sum(self.breakdown["by_role_ms"].values()) or 1.0
            for role, ms in self.breakdown["by_role_ms"].items():
                b.add_row(role, f"{ms:.2f}", f"{100 * ms / total:.1f}%")
            out.append(b)
            n = Table(title="slowest modules (summed over blocks)")
            n.add_column("module")
            n.add_column("ms", justify="right")
            for name, ms in list(self.breakdown["by_name_ms"].items())[:10]:
                n.add_row(name, f"{ms:.2f}")
            out.append(n)
        return out


def _check(name: str, value: int, least: int) -> None:
    if value < least:
        raise ConfigError(
            f"{name} must be at least {least} (got {value})", f"pass {name} >= {least}"
        )


def _timing_metrics(timings: dict[str, list[float]], prefill_tokens: int) -> dict[str, float]:
    """Latency (and energy) metrics from raw per-run timings: median, with min/max beside it."""
    m: dict[str, float] = {}
    if "prefill_ms" in timings:
        s = summary(timings["prefill_ms"])
        m["latency/prefill_ms"] = s["median"]
        m["latency/prefill_ms_min"] = s["min"]
        m["latency/prefill_ms_max"] = s["max"]
        m["latency/prefill_tok_s"] = prefill_tokens / (s["median"] / 1000)
    if "prefill_j" in timings:
        m["energy/prefill_j"] = summary(timings["prefill_j"])["median"]
        m["energy/token_mj"] = 1000 * m["energy/prefill_j"] / prefill_tokens
    if "decode_tok_s" in timings:
        s = summary(timings["decode_tok_s"])
        m["latency/decode_tok_s"] = s["median"]
        m["latency/decode_tok_s_min"] = s["min"]
        m["latency/decode_tok_s_max"] = s["max"]
    if "generate_tok_s" in timings:
        m["latency/generate_tok_s"] = summary(timings["generate_tok_s"])["median"]
    return m


def max_positions(model: Any) -> int | None:
    """The longest sequence a model's position embeddings allow (None: no fixed limit known)."""
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def fit_lengths(
    lm: Any, *, seq_len: int, new_tokens: int, prompt_len: int, limit: int | None = None
) -> tuple[int, int, int, dict[str, Any]]:
    """Fit the protocol's lengths into the model's window (``limit``, default the model's own):
    a GPT-2/OPT with 128 positions is measured at 128-token prefill and prompt + new tokens
    within 128, rather than refused. Returns the lengths used and what changed (and warns)."""
    max_pos = limit or max_positions(lm.model)
    causal = lm.kind == "causal-lm"
    asked = {"seq_len": seq_len, "new_tokens": new_tokens, "prompt_len": prompt_len}
    if max_pos:
        seq_len = min(seq_len, max_pos)
        if causal and prompt_len + new_tokens > max_pos:
            if prompt_len >= max_pos:
                prompt_len = max(1, min(prompt_len, max_pos // 4))
            new_tokens = max(1, min(new_tokens, max_pos - prompt_len))
    used = {"seq_len": seq_len, "new_tokens": new_tokens, "prompt_len": prompt_len}
    fitted = {k: {"asked": asked[k], "used": used[k]} for k in asked if asked[k] != used[k]}
    if fitted:
        what = ", ".join(f"{k} {v['used']} (asked {v['asked']})" for k, v in fitted.items())
        warnings.warn(
            f"{lm.source} takes at most {max_pos} positions: measuring with {what}",
            stacklevel=3,
        )
        fitted["max_positions"] = max_pos
    return seq_len, new_tokens, prompt_len, fitted


def profile(
    model_or_loaded: Any,
    *,
    seq_len: int = 512,
    new_tokens: int = 64,
    prompt_len: int = 32,
    repeats: int = 5,
    warmup: int = 1,
    threads: int = 2,
    batch: int = 1,
    breakdown: bool = True,
    tokenizer: Any = None,
    seed: int = 0,
) -> Profile:
    """Measure a model: parameters, stored bytes by dtype, FLOPs per token, prefill latency, decode
    speed (causal LMs), peak memory, per-module time breakdown, and energy where readable.

    Runs the BENCH.md protocol by default (512-token prefill; 64 greedy tokens after a 32-token
    prompt; 1 warm-up, median of 5; 2 threads; batch 1). Inputs are seeded random token ids:
    dense-model latency does not depend on the text.
    """
    lm = resolve(model_or_loaded, tokenizer)
    model, arch = lm.model, lm.arch
    _check("seq_len", seq_len, 1)
    _check("repeats", repeats, 1)
    _check("threads", threads, 1)
    _check("batch", batch, 1)
    _check("warmup", warmup, 0)
    causal = lm.kind == "causal-lm"
    if causal:
        _check("new_tokens", new_tokens, 1)
        _check("prompt_len", prompt_len, 1)
    seq_len, new_tokens, prompt_len, fitted = fit_lengths(
        lm, seq_len=seq_len, new_tokens=new_tokens, prompt_len=prompt_len
    )

    stats = param_stats(model)
    flops = flops_per_token(model, arch, seq_len)
    metrics: dict[str, float] = {
        "params/total": stats.total,
        "params/nonzero": stats.nonzero,
        "size/bytes": stats.bytes,
    }
    if lm.path is not None and lm.path.exists() and lm.path.is_dir():
        metrics["size/disk_bytes"] = size_on_disk(lm.path)
    metrics["flops/token"] = flops["total"]
    if causal:
        metrics["flops/token_decode"] = flops_per_token(
            model, arch, prompt_len + new_tokens, mode="decode"
        )["total"]

    vocab = int(model.get_input_embeddings().num_embeddings)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=gen)
    mask = torch.ones_like(ids)
    prompt = torch.randint(0, vocab, (batch, prompt_len), generator=gen)

    @torch.inference_mode()
    def prefill() -> None:
        if causal:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        else:
            model(input_ids=ids, attention_mask=mask)

    timings: dict[str, list[float]] = {}
    energy = Energy()
    energy_info: dict[str, Any] = {"available": energy.available}
    if not energy.available:
        energy_info["reason"] = energy.reason
    was_training = model.training
    model.eval()
    try:
        with torch_threads(threads), RssSampler() as rss:
            pre = timed(prefill, repeats, warmup)
            timings["prefill_ms"] = [1000 * s for s in pre]
            if energy.available:
                timings["prefill_j"] = [energy.measure(prefill) for _ in range(repeats)]
                energy_info["scope"] = "whole CPU package (other processes included)"
            if causal:
                for _ in range(warmup):
                    greedy_decode(model, prompt, new_tokens)
                steps, e2e = [], []
                for _ in range(repeats):
                    t_prompt, t_steps, _ = greedy_decode(model, prompt, new_tokens)
                    if new_tokens > 1:
                        steps.append(batch * (new_tokens - 1) / t_steps)
                    e2e.append(batch * new_tokens / (t_prompt + t_steps))
                if steps:
                    timings["decode_tok_s"] = steps
                timings["generate_tok_s"] = e2e
        metrics.update(_timing_metrics(timings, batch * seq_len))
        metrics["memory/peak_mb"] = rss.peak / MB
        metrics["memory/start_mb"] = rss.start / MB
        metrics["memory/process_peak_mb"] = lifetime_peak_rss() / MB
        metrics["memory/model_mb"] = stats.bytes / MB
        bd = None
        if breakdown:
            with torch_threads(threads):
                bd = module_breakdown(model, arch, prefill, runs=min(repeats, 3))
    finally:
        model.train(was_training)

    return Profile(
        model=lm.source,
        kind=lm.kind,
        metrics=metrics,
        params=stats.to_dict(),
        flops=flops,
        timings=timings,
        breakdown=bd,
        energy=energy_info,
        env={"engine": ENGINE, "threads": threads, "batch": batch, "machine": machine()},
        settings={
            "seq_len": seq_len,
            "new_tokens": new_tokens,
            "prompt_len": prompt_len,
            "repeats": repeats,
            "warmup": warmup,
            "inputs": f"random token ids, seed {seed}",
            **({"fitted_to_model": fitted} if fitted else {}),
        },
    )


def profile_paired(
    models: list[Any], *, rounds: int = 5, warmup: int = 1, **kwargs: Any
) -> list[Profile]:
    """Profile several models with their timed runs interleaved, A B A B …, one ``profile`` run per
    model per round (untimed warm-ups only in the first round).

    On a shared machine the load changes while one model is timed after another; interleaving
    makes a change hit every model alike, so latency *ratios* between them stay fair. Each model's
    latency is its median over the rounds; ``kwargs`` go to ``profile`` (not ``repeats``).
    """
    _check("rounds", rounds, 1)
    if "repeats" in kwargs:
        raise ConfigError("profile_paired takes rounds, not repeats", "pass rounds=N")
    kwargs["breakdown"] = False
    models = [resolve(m, kwargs.get("tokenizer")) for m in models]
    # Every model is measured at the same lengths: those the smallest window among them allows.
    limits = [n for n in (max_positions(m.model) for m in models) if n]
    if limits:
        lengths = {k: kwargs.pop(k) for k in ("seq_len", "new_tokens", "prompt_len") if k in kwargs}
        seq_len, new_tokens, prompt_len, _ = fit_lengths(
            min(models, key=lambda m: max_positions(m.model) or 1 << 62),
            seq_len=lengths.get("seq_len", 512),
            new_tokens=lengths.get("new_tokens", 64),
            prompt_len=lengths.get("prompt_len", 32),
            limit=min(limits),
        )
        kwargs.update(seq_len=seq_len, new_tokens=new_tokens, prompt_len=prompt_len)
    per_round = [
        [profile(m, repeats=1, warmup=warmup if r == 0 else 0, **kwargs) for m in models]
        for r in range(rounds)
    ]
    out = []
    for i in range(len(models)):
        runs = [rnd[i] for rnd in per_round]
        first = runs[0]
        timings: dict[str, list[float]] = {}
        for p in runs:
            for k, xs in p.timings.items():
                timings.setdefault(k, []).extend(xs)
        metrics = dict(first.metrics)
        metrics.update(_timing_metrics(timings, first.env["batch"] * first.settings["seq_len"]))
        for k in ("memory/peak_mb", "memory/process_peak_mb"):
            metrics[k] = max(p.metrics[k] for p in runs)
        settings = {**first.settings, "repeats": rounds, "interleaved_models": len(models)}
        out.append(
            Profile(
                model=first.model,
                kind=first.kind,
                metrics=metrics,
                params=first.params,
                flops=first.flops,
                timings=timings,
                energy=first.energy,
                env=first.env,
                settings=settings,
            )
        )
    return out
