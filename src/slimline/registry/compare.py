"""A/B comparison of two artifacts on the same metrics, with a verdict per metric.

Metrics come from the registry (refs) or the manifests (paths); with ``run`` both models are
measured by the same callable in the same process, so the numbers share data and machine.
Whether higher or lower is better is read from the metric's name (docs/DEVELOPING.md scheme).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimline.artifact.spec import is_artifact, manifest_digest, read_manifest
from slimline.errors import ConfigError
from slimline.metrics import direction


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


@dataclass
class MetricDelta:
    metric: str
    a: float | None
    b: float | None
    delta: float | None  # b - a
    ratio: float | None  # b / a
    direction: str | None
    verdict: str  # for B against A: better | worse | same | differs | only in a | only in b


def judge(metric: str, a: Any, b: Any, tolerance: float = 0.01) -> MetricDelta:
    """B against A on one metric; ``same`` when the relative difference is within ``tolerance``."""
    va, vb, d = _num(a), _num(b), direction(metric)
    if va is None or vb is None:
        verdict = (
            "only in a"
            if vb is None and va is not None
            else "only in b"
            if va is not None or vb is not None
            else "differs"
        )
        return MetricDelta(metric, va, vb, None, None, d, verdict)
    delta = vb - va if math.isfinite(va) and math.isfinite(vb) else None
    ratio = vb / va if va != 0 and math.isfinite(va) and math.isfinite(vb) else None
    if va == vb or (delta is not None and abs(delta) <= tolerance * max(abs(va), abs(vb))):
        verdict = "same"
    elif math.isnan(va) or math.isnan(vb) or d is None:
        verdict = "differs"
    elif (vb < va) == (d == "lower"):
        verdict = "better"
    else:
        verdict = "worse"
    return MetricDelta(metric, va, vb, delta, ratio, d, verdict)


@dataclass
class Comparison:
    a: str
    b: str
    rows: list[MetricDelta] = field(default_factory=list)
    measured: bool = False  # True when ``run`` measured both in this process
    digest_a: str | None = None
    digest_b: str | None = None

    def count(self, verdict: str) -> int:
        return sum(r.verdict == verdict for r in self.rows)

    @property
    def verdict(self) -> str:
        """Overall, for B against A: better, worse, mixed or same."""
        better, worse = self.count("better"), self.count("worse")
        if better and worse:
            return "mixed"
        return "better" if better else "worse" if worse else "same"

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "digest_a": self.digest_a,
            "digest_b": self.digest_b,
            "measured": self.measured,
            "verdict": self.verdict,
            "rows": [asdict(r) for r in self.rows],
        }


def _side(x: Any, registry: Any) -> tuple[str, dict[str, Any], Path | None, str | None, Any]:
    """(label, recorded metrics, artifact path, digest, registry) for a path, ref or Version."""
    if hasattr(x, "metrics") and hasattr(x, "path") and hasattr(x, "ref"):  # a registry Version
        return x.ref, dict(x.metrics), Path(x.path), x.digest, registry
    if isinstance(x, (str, os.PathLike)) and is_artifact(x):
        m = read_manifest(x)
        return str(x), dict(m.get("metrics") or {}), Path(x), manifest_digest(m), registry
    if isinstance(x, str):
        if registry is None:
            from slimline.registry.store import Registry

            registry = Registry()
        v = registry.get(x)
        return v.ref, dict(v.metrics), v.path, v.digest, registry
    raise ConfigError(
        f"cannot compare {x!r}", "pass an artifact directory or a registry ref (name@version)"
    )


def compare(
    a: Any,
    b: Any,
    *,
    metrics_a: dict[str, Any] | None = None,
    metrics_b: dict[str, Any] | None = None,
    run: Callable[[Any], dict[str, Any]] | None = None,
    registry: Any = None,
    tolerance: float = 0.01,
) -> Comparison:
    """Compare B against A (artifact paths, registry refs or Versions) metric by metric.

    ``metrics_a``/``metrics_b`` override the recorded metrics; ``run(lm) -> metrics`` (``lm`` a
    ``slimline.models.LoadedModel``) measures both models on the same data instead.
    """
    if tolerance < 0:
        raise ConfigError(
            f"tolerance {tolerance} is negative", "use a relative tolerance such as 0.01 (1%)"
        )
    sides = []
    for x, given in ((a, metrics_a), (b, metrics_b)):
        if given is not None and run is None:  # nothing to look up: label it as given
            sides.append((getattr(x, "ref", str(x)), dict(given), None, None))
            continue
        label, recorded, path, digest, registry = _side(x, registry)
        if run is not None:
            from slimline.models import load_model

            recorded = {**recorded, **run(load_model(path))}
        sides.append((label, dict(given) if given is not None else recorded, path, digest))
    (la, ma, _, da), (lb, mb, _, db) = sides
    names = sorted(set(ma) | set(mb))
    rows = [judge(n, ma.get(n), mb.get(n), tolerance) for n in names]
    return Comparison(la, lb, rows, measured=run is not None, digest_a=da, digest_b=db)
