"""The model registry: versions, lineage, aliases moved only through promotion gates, one-call
rollback, an append-only audit log (SQLite by default, safe with concurrent writers), and A/B
comparison of two artifacts."""

from slimline.registry.compare import Comparison, MetricDelta, compare, direction, judge
from slimline.registry.gates import Gate, GateReport, GateResult, evaluate_gates
from slimline.registry.store import Registry, Version

__all__ = [
    "Comparison",
    "Gate",
    "GateReport",
    "GateResult",
    "MetricDelta",
    "Registry",
    "Version",
    "compare",
    "direction",
    "evaluate_gates",
    "judge",
]
