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

import math
import operator
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from slimline.errors import ConfigError

REFERENCES = ("parent", "current", "baseline")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RE = re.compile(
    rf"^\s*(?P<metric>[^\s<>=]+)\s*(?P<op><=|>=|==|<|>)\s*(?:"
    rf"(?P<factor>{_NUM})\s*[x*]\s*(?P<ref1>{'|'.join(REFERENCES)})"
    rf"|(?P<ref2>{'|'.join(REFERENCES)})\s*(?:(?P<sign>[-+])\s*(?P<offset>{_NUM}))?"
    rf"|(?P<absolute>{_NUM}))\s*$"
)


@dataclass(frozen=True)
class Gate:
    """``metric op threshold`` where threshold = absolute, or factor x ref + offset."""

    metric: str
    op: str
    ref: str | None = None
    factor: float = 1.0
    offset: float = 0.0
    absolute: float | None = None

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | Gate) -> Gate:
        if isinstance(spec, Gate):
            return spec
        if isinstance(spec, dict):
            try:
                g = cls(**spec)
            except TypeError as e:
                raise ConfigError(
                    f"bad gate {spec}: {e}", "fields: metric, op, ref, factor, offset, absolute"
                ) from e
            if (
                g.op not in _OPS
                or (g.ref is None) == (g.absolute is None)
                or (g.ref and g.ref not in REFERENCES)
            ):
                raise ConfigError(
                    f"bad gate {spec}",
                    f"op in {list(_OPS)}; either ref in {REFERENCES} or absolute",
                )
            return g
        m = _RE.match(str(spec))
        if not m:
            raise ConfigError(
                f"cannot read gate {spec!r}",
                "write `<metric> <op> <number>`, `<metric> <op> <factor> x parent|current|baseline` "
                "or `<metric> <op> parent|current|baseline +/- <number>`",
            )
        d = m.groupdict()
        if d["absolute"] is not None:
            return cls(d["metric"], d["op"], absolute=float(d["absolute"]))
        if d["ref1"]:
            return cls(d["metric"], d["op"], ref=d["ref1"], factor=float(d["factor"]))
        off = float(d["offset"]) * (-1 if d["sign"] == "-" else 1) if d["offset"] else 0.0
        return cls(d["metric"], d["op"], ref=d["ref2"], offset=off)

    def __str__(self) -> str:
        if self.ref is None:
            return f"{self.metric} {self.op} {self.absolute:g}"
        rhs = self.ref if self.factor == 1.0 else f"{self.factor:g} x {self.ref}"
        if self.offset:
            rhs += f" {'+' if self.offset > 0 else '-'} {abs(self.offset):g}"
        return f"{self.metric} {self.op} {rhs}"

    def threshold(self, reference_value: float | None) -> float:
        if self.ref is None:
            assert self.absolute is not None
            return self.absolute
        assert reference_value is not None
        return reference_value * self.factor + self.offset

    def holds(self, value: float, reference_value: float | None) -> bool:
        t = self.threshold(reference_value)
        if math.isnan(value) or math.isnan(t):
            return False
        return _OPS[self.op](value, t)


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
        t = g.threshold(ref_value)
        ok = g.holds(value, ref_value)
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
