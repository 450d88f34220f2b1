"""Promotion gates: regression checks a version must pass before an alias may point at it.

A gate is one line of text, e.g.::

    ppl/python-docs <= 1.05 x parent     # at most 5% worse than the parent
    size/bytes <= 60e6                    # an absolute limit
    latency/decode_tok_s >= 0.95 x current   # no slower than what holds the alias now, -5%
    kl/teacher <= baseline + 0.02         # an absolute margin over the baseline

References: ``parent`` (the version's parent artifact), ``current`` (the version that holds the
alias now), ``baseline`` (the version holding the ``baseline`` alias, else the lineage root).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from slimline.gates import Gate as BaseGate

REFERENCES = ("parent", "current", "baseline")


class Gate(BaseGate):
    """A promotion gate: a relative limit is against the ``parent``, ``current`` or ``baseline``
    version's value."""

    references = REFERENCES


@dataclass
class GateResult:
    gate: str
    metric: str
    status: str  # "pass" | "fail" | "skipped"
    value: float | None = None
    threshold: float | None = None
    reference: str | None = None  # "parent" | "current" | "baseline" | None
    reference_ref: str | None = None  # name@version of the reference
    reference_value: float | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status != "fail"


@dataclass
class GateReport:
    """The outcome of a promotion: every gate's numbers, and whether the alias moved."""

    ref: str
    alias: str
    results: list[GateResult] = field(default_factory=list)
    promoted: bool = False
    forced: bool = False
    reason: str | None = None
    previous: str | None = None  # name@version that held the alias before

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "alias": self.alias,
            "passed": self.passed,
            "promoted": self.promoted,
            "forced": self.forced,
            "reason": self.reason,
            "previous": self.previous,
            "results": [asdict(r) for r in self.results],
        }

    def __str__(self) -> str:
        head = f"{self.ref} -> {self.alias}: " + (
            "promoted" + (" (forced: " + str(self.reason) + ")" if self.forced else "")
            if self.promoted
            else "blocked"
        )
        return "\n".join([head, *(f"  [{r.status}] {r.detail}" for r in self.results)])


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def evaluate_gates(
    gates: list[Gate],
    metrics: dict[str, Any],
    references: dict[str, tuple[str, dict[str, Any]] | None],
) -> list[GateResult]:
    """Check ``metrics`` against each gate; ``references`` maps parent/current/baseline to
    ``(name@version, metrics)`` or None when there is no such version (gate skipped)."""
    out = []
    for g in gates:
        value = _num(metrics.get(g.metric))
        ref_name = ref_value = None
        if g.ref is not None:
            ref = references.get(g.ref)
            if ref is None:
                out.append(
                    GateResult(
                        str(g),
                        g.metric,
                        "skipped",
                        value,
                        reference=g.ref,
                        detail=f"{g}: no {g.ref} version, gate skipped",
                    )
                )
                continue
            ref_name, ref_metrics = ref
            ref_value = _num(ref_metrics.get(g.metric))
            if ref_value is None:
                out.append(
                    GateResult(
                        str(g),
                        g.metric,
                        "fail",
                        value,
                        reference=g.ref,
                        reference_ref=ref_name,
                        detail=f"{g}: {g.ref} {ref_name} has no {g.metric} to compare with (measure it, or --force with a reason)",
                    )
                )
                continue
        if value is None:
            out.append(
                GateResult(
                    str(g),
                    g.metric,
                    "fail",
                    None,
                    reference=g.ref,
                    reference_ref=ref_name,
                    reference_value=ref_value,
                    detail=f"{g}: this version has no {g.metric} (measure it before promoting)",
                )
            )
            continue
        t = g.limit(ref_value)
        assert t is not None  # a relative gate got here with its reference value
        ok = g.check(value, ref_value, finite=False)
        how = (
            f" ({g.factor:g} x {g.ref} {ref_name} = {ref_value:.6g}{f' {g.offset:+g}' if g.offset else ''})"
            if g.ref
            else ""
        )
        out.append(
            GateResult(
                str(g),
                g.metric,
                "pass" if ok else "fail",
                value,
                t,
                g.ref,
                ref_name,
                ref_value,
                detail=f"{g.metric} {value:.6g} {g.op} {t:.6g}{how}: {'pass' if ok else 'FAIL'}",
            )
        )
    return out
