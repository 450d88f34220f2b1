"""Metric names and directions, one place for every consumer (reports, gates, search, targets).

Names follow DESIGN.md: ``ppl/<dataset>``, ``kl/teacher``, ``agree/top1``, ``ece``,
``acc/<task>``, ``size/bytes``, ``latency/prefill_ms``, ``latency/decode_tok_s``, ``memory/peak_mb``.
Evaluation suites add ``kl/p90|p99|max/<dataset>``, ``flip/<what>`` (share of answers that changed
against the reference), ``shift/<dataset>``, ``noise/<kind>``, ``overconfidence[/<task>]``,
``consistency/<ctx>``, ``spearman/teacher``; ``stderr/<metric>`` is a standard error (no direction).
"""

from __future__ import annotations

from slimline.errors import ConfigError

LOWER_IS_BETTER = (
    "ppl/",
    "bpb/",
    "kl/",
    "ece",
    "size/",
    "memory/",
    "flops/",
    "latency/prefill",
    "params/",
    "energy/",
    "time/",
    "loss",
    "flip/",
    "shift/",
    "noise/",
    "overconfidence",
)
HIGHER_IS_BETTER = (
    "acc/",
    "agree/",
    "cos/",
    "recall@",
    "passkey/",
    "consistency/",
    "spearman/",
    "latency/decode",
    "throughput/",
    "f1",
    "score",
)
RATE_SUFFIXES = ("tok_s", "tokens_per_s", "per_s")


def direction(metric: str) -> str | None:
    """``"higher"``, ``"lower"`` or None when the name does not say (a rate is always higher)."""
    if metric.endswith(RATE_SUFFIXES) or metric.startswith(HIGHER_IS_BETTER):
        return "higher"
    if metric.startswith(LOWER_IS_BETTER):
        return "lower"
    return None


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is an improvement."""
    d = direction(metric)
    if d is not None:
        return d == "higher"
    raise ConfigError(
        f"unknown metric {metric!r}: cannot tell whether higher or lower is better",
        f"use a metric named like {', '.join(p.rstrip('/') for p in LOWER_IS_BETTER + HIGHER_IS_BETTER)}",
    )
