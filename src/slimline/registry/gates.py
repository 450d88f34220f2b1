"""Promotion gates: regression checks a version must pass before an alias may point at it.

A gate is one line of text, e.g.::

    ppl/python-docs <= 1.05 x parent     # at most 5% worse than the parent
    size/bytes <= 60e6                    # an absolute limit
    latency/decode_tok_s >= 0.95 x current   # no slower than what holds the alias now, -5%
    kl/teacher <= baseline + 0.02         # an absolute margin over the baseline

References: ``parent`` (the version's parent artifact), ``current`` (the version that holds the
alias now), ``baseline`` (the version holding the ``baseline`` alias, else the lineage root).

A gate line may also name an evaluation suite (``slimline.eval.suites``)::

    suite default                         # every gate of the default suite, against the parent
    suite default vs baseline             # ... against the baseline

Its metrics are the ones the version's recipe run recorded against that same reference (the
artifact's manifest), else the suite is run on the stored copies of both; the suite's own gates
judge them, one result per verdict.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimline.errors import ConfigError
from slimline.gates import Gate as BaseGate

REFERENCES = ("parent", "current", "baseline")
SUITE_REFERENCES = ("parent", "baseline")  # a suite compares two models: "current" may be none
_SUITE_LINE = re.compile(r"^\s*suite\s+(?P<name>[A-Za-z0-9._-]+)(?:\s+vs\s+(?P<ref>\S+))?\s*$")


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


@dataclass(frozen=True)
class SuiteGate:
    """``suite <name> [vs parent|baseline]``: the named evaluation suite's gates, on the version
    against its parent (the default) or baseline."""

    suite: str
    ref: str = "parent"

    @classmethod
    def parse(cls, spec: str | SuiteGate) -> SuiteGate:
        """A suite gate from its line (``suite default vs baseline``) or as it is; the suite
        must exist (``ConfigError`` naming the ones that do)."""
        if isinstance(spec, SuiteGate):
            return spec
        m = _SUITE_LINE.match(str(spec))
        if not m:
            raise ConfigError(
                f"cannot read suite gate {spec!r}",
                f"write `suite <name>` or `suite <name> vs {'|'.join(SUITE_REFERENCES)}`",
            )
        ref = m["ref"] or "parent"
        if ref not in SUITE_REFERENCES:
            raise ConfigError(
                f"suite gate {spec!r}: a suite is judged against {' or '.join(SUITE_REFERENCES)}, "
                f"not {ref!r}",
                f"write `suite {m['name']} vs parent` or `suite {m['name']} vs baseline`",
            )
        from slimline.eval.suites import get_suite

        get_suite(m["name"])
        return cls(m["name"], ref)

    def __str__(self) -> str:
        return f"suite {self.suite} vs {self.ref}"


def parse_gate(spec: str | dict[str, Any] | Gate | SuiteGate) -> Gate | SuiteGate:
    """A promotion gate line: a metric gate, or a suite gate (a line that starts with ``suite``)."""
    if isinstance(spec, SuiteGate) or (isinstance(spec, str) and spec.split()[:1] == ["suite"]):
        return SuiteGate.parse(spec)
    return Gate.parse(spec)


def recorded_suite(
    manifest: dict[str, Any], gate: SuiteGate, reference_digest: str
) -> dict[str, Any] | None:
    """The suite record a recipe run stored in the artifact's manifest, when it is this suite
    against this very reference (else None: it must be run)."""
    rec = manifest.get("suite")
    if not isinstance(rec, dict) or rec.get("suite") != gate.suite:
        return None
    if rec.get("reference_digest") != reference_digest:
        return None
    if not isinstance(rec.get("metrics"), dict) or not isinstance(rec.get("reference"), dict):
        return None
    return rec


def run_suite_gate(
    gate: SuiteGate,
    version: tuple[str, Path, dict[str, Any]],
    reference: tuple[str, str, Path] | None,
    load: Any,
) -> list[GateResult]:
    """One ``GateResult`` per verdict of the suite's gates for ``version`` (``(ref, stored path,
    manifest)``) against ``reference`` (``(ref, digest, stored path)``, None when the version has
    no such reference: skipped, as a metric gate is). ``load(path)`` gives a ``LoadedModel`` of
    a stored copy (verified); it is called only when the run recorded no usable suite."""
    from slimline.eval.suites import check_gates, get_suite, run_suite

    line = str(gate)
    if reference is None:
        return [GateResult(line, f"suite/{gate.suite}", "skipped", reference=gate.ref,
                           detail=f"{line}: no {gate.ref} version, gate skipped")]  # fmt: skip
    ref_name, ref_digest, ref_path = reference
    rec = recorded_suite(version[2], gate, ref_digest)
    how = "recorded by its run"
    if rec is None:
        r = run_suite(load(version[1]), suite=gate.suite, reference=load(ref_path))
        rec, how = {"metrics": r.metrics, "reference": r.reference}, "run now"
    verdicts, notes = check_gates(
        list(get_suite(gate.suite).gates), rec["metrics"], rec["reference"]
    )
    if not verdicts:
        return [GateResult(line, f"suite/{gate.suite}", "fail", reference=gate.ref,
                           reference_ref=ref_name,
                           detail=f"{line}: no gate of the suite could be judged ({'; '.join(notes) or 'no metrics'})")]  # fmt: skip
    out = []
    for v in verdicts:
        ok = bool(v["passed"])
        lim = "—" if v["limit"] is None else f"{v['limit']:.6g}"
        out.append(
            GateResult(
                f"{line}: {v['gate']}",
                v["metric"],
                "pass" if ok else "fail",
                _num(v["value"]),
                _num(v["limit"]),
                gate.ref,
                ref_name,
                _num(rec["reference"].get(v["metric"])),
                detail=f"{line} ({how}, {gate.ref} {ref_name}): {v['metric']} {v['value']:.6g} "
                f"vs {v['gate']} = {lim}: {'pass' if ok else 'FAIL'}",
            )
        )
    return out
