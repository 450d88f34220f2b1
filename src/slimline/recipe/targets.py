"""Check deployment targets against what was measured: one verdict per target.

A verdict is ``met``, ``missed`` (with the numbers) or ``not measured``: a target with no
measurement never passes. Quality targets compare with the baseline measured in the same run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from slimline.metrics import higher_is_better
from slimline.recipe.schema import EngineLimit, Targets, parse_quality_limit

MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"


@dataclass(frozen=True)
class Verdict:
    target: str  # e.g. "max_size_mb", "max_quality_loss[ppl/python-docs]"
    metric: str  # the metric it reads, e.g. "size/bytes"
    status: str  # met | missed | not measured
    limit: float | None  # the absolute limit the value was compared with
    value: float | None
    text: str  # one human line: "size 70.1 MB <= 200 MB: met"
    baseline: float | None = None

    @property
    def met(self) -> bool:
        return self.status == MET

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def _limit_verdict(
    target: str,
    metric: str,
    value: float | None,
    limit: float,
    upper: bool,
    unit: str,
    why: str = "",
) -> Verdict:
    op = "<=" if upper else ">="
    if value is None:
        return Verdict(target, metric, NOT_MEASURED, limit, None, f"{target}: not measured{why}")
    ok = value <= limit if upper else value >= limit
    status = MET if ok else MISSED
    text = f"{metric} {_fmt(value)}{unit} {op} {_fmt(limit)}{unit}: {status}"
    return Verdict(target, metric, status, limit, value, text)


def _engine_value(
    metrics: dict[str, Any], metric: str, lim: EngineLimit
) -> tuple[float | None, str]:
    # the primary engine's figures are plain (``latency/setup``), each other's carry its name
    # (``latency/setup@torch``): the target reads the one timed on its engine and threads
    seen = []
    for key, setup in metrics.items():
        if not (key == "latency/setup" or key.startswith("latency/setup@")):
            continue
        setup = setup or {}
        if setup.get("engine") == lim.engine and setup.get("threads") == lim.threads:
            return _num(metrics.get(metric + key.removeprefix("latency/setup"))), ""
        seen.append(f"{setup.get('engine')} with {setup.get('threads')} threads")
    if not seen:
        return None, ""
    return None, f" on {lim.engine} with {lim.threads} threads (measured on {', '.join(seen)})"


def check_targets(
    targets: Targets, final: dict[str, Any], baseline: dict[str, Any]
) -> list[Verdict]:
    """One verdict per declared target; quality limits are relative to ``baseline``."""
    out: list[Verdict] = []
    if targets.max_size_mb is not None:
        b = _num(final.get("size/bytes"))
        out.append(
            _limit_verdict(
                "max_size_mb",
                "size/bytes",
                None if b is None else b / 1e6,
                targets.max_size_mb,
                True,
                " MB",
            )
        )
    if targets.max_prefill_ms is not None:
        lim = targets.max_prefill_ms
        v, why = _engine_value(final, "latency/prefill_ms", lim)
        out.append(
            _limit_verdict("max_prefill_ms", "latency/prefill_ms", v, lim.value, True, " ms", why)
        )
    if targets.min_decode_tok_s is not None:
        lim = targets.min_decode_tok_s
        v, why = _engine_value(final, "latency/decode_tok_s", lim)
        out.append(
            _limit_verdict(
                "min_decode_tok_s", "latency/decode_tok_s", v, lim.value, False, " tok/s", why
            )
        )
    if targets.max_memory_mb is not None:
        out.append(
            _limit_verdict(
                "max_memory_mb",
                "memory/peak_mb",
                _num(final.get("memory/peak_mb")),
                targets.max_memory_mb,
                True,
                " MB",
            )
        )
    for metric, spec in targets.max_quality_loss.items():
        out.append(quality_verdict(metric, spec, final, baseline))
    return out


def quality_verdict(
    metric: str, spec: float | str, final: dict[str, Any], baseline: dict[str, Any]
) -> Verdict:
    """``metric`` within ``spec`` (ratio or delta) of its baseline value."""
    target = f"max_quality_loss[{metric}]"
    mode, amount = parse_quality_limit(metric, spec)
    higher = higher_is_better(metric)
    base, value = _num(baseline.get(metric)), _num(final.get(metric))
    if base is None or value is None:
        missing = "baseline" if base is None else "compressed model"
        return Verdict(
            target,
            metric,
            NOT_MEASURED,
            None,
            value,
            f"{target}: not measured on the {missing}",
            base,
        )
    if mode == "ratio":
        limit = base / amount if higher else base * amount
        how = f"{'1/' if higher else ''}{amount:g} x baseline {_fmt(base)}"
    else:
        limit = base - amount if higher else base + amount
        how = f"baseline {_fmt(base)} {'-' if higher else '+'} {amount:g}"
    ok = value >= limit if higher else value <= limit
    status = MET if ok else MISSED
    op = ">=" if higher else "<="
    rel = value / base if base else float("nan")
    text = f"{metric} {_fmt(value)} ({rel:.3f} x baseline) {op} {how} = {_fmt(limit)}: {status}"
    return Verdict(target, metric, status, limit, value, text, base)


def suite_verdicts(suite: dict[str, Any] | None) -> list[Verdict]:
    """Verdicts of the recipe's evaluation suite (``measure.suite``'s record): one for the
    suite's own gates (missed when any fails, naming them), one per extra ``eval.gates`` line
    (missed when it fails, ``not measured`` when it matched no metric the suite produced)."""
    if not suite:
        return []
    name = suite["suite"]
    own = [v for v in suite["verdicts"] if not v.get("extra")]
    failed = [v for v in own if not v["passed"]]
    text = f"suite {name}: {len(own) - len(failed)}/{len(own)} gates passed" + (
        "; failed: " + "; ".join(_gate_text(v) for v in failed) if failed else ""
    )
    status = MISSED if failed else MET if own else NOT_MEASURED  # no gate judged: never passes
    if not own:
        text = f"suite {name}: no gate could be judged ({'; '.join(suite.get('skipped') or []) or 'no metrics'})"
    out = [Verdict(f"suite[{name}]", f"suite/{name}", status, None, None, text)]
    for line in suite.get("gates") or []:
        mine = [v for v in suite["verdicts"] if v.get("extra") == line]
        target = f"suite[{name}] gate {line!r}"
        if not mine:
            out.append(
                Verdict(
                    target,
                    line.split()[0],
                    NOT_MEASURED,
                    None,
                    None,
                    f"{target}: {_why(suite, line)}",
                )
            )
            continue
        bad = [v for v in mine if not v["passed"]]
        worst = bad[0] if bad else mine[0]
        out.append(
            Verdict(
                target,
                worst["metric"],
                MISSED if bad else MET,
                _num(worst["limit"]),
                _num(worst["value"]),
                "; ".join(_gate_text(v) for v in (bad or mine)),
            )
        )
    return out


def _gate_text(v: dict[str, Any]) -> str:
    lim = "—" if v["limit"] is None else _fmt(v["limit"])
    return f"{v['metric']} {_fmt(v['value'])} vs {v['gate']} (limit {lim}): {MET if v['passed'] else MISSED}"


def _why(suite: dict[str, Any], line: str) -> str:
    notes = [s for s in suite.get("skipped") or [] if line in s or line.split()[0] in s]
    return "not measured: " + (
        "; ".join(notes) if notes else "the suite produced no metric it names"
    )
