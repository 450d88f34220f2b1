"""Suites (named lists of tasks) and gates (rules over their metrics), and ``run_suite``.

A gate is one line: ``<metric> <op> <number>`` (absolute), ``<metric> <op> <factor> x reference``
or ``<metric> <op> reference +/- <number>`` (relative to the reference's value of the same metric
on the same items). ``<metric>`` may be a glob (``flip/top1/*``): one verdict per metric it
matches. The default suite's gates are set so a healthy 8-bit model passes them all while each of
the planted failures in ``tests/eval/test_planted.py`` trips its own.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slimline.errors import ConfigError
from slimline.eval.capability import Capability
from slimline.eval.cloze import Calibration, Cloze, Lambada
from slimline.eval.encoder import Retrieval
from slimline.eval.engine import LogitsEngine, TorchEngine, as_engine
from slimline.eval.lmeval import LmEval  # noqa: F401  (registers the "lmeval" task)
from slimline.eval.longctx import LongContext
from slimline.eval.noise import Noise
from slimline.eval.tail import DomainShift, Tail
from slimline.eval.tasks import TaskConfig, TaskContext, make_task, run_task
from slimline.gates import Gate as BaseGate
from slimline.metrics import direction
from slimline.progress import track


class Gate(BaseGate):
    """A suite gate: a relative limit is against the ``reference`` model's value."""

    references = ("reference",)


@dataclass(frozen=True)
class Suite:
    """A named list of tasks and the gates its metrics must pass."""

    name: str
    tasks: tuple[TaskConfig, ...]
    gates: tuple[str, ...] = ()
    about: str = ""


DEFAULT_GATES = (
    "ppl/python-docs <= 1.10 x reference",
    "kl/p99/* <= 1.5",
    "flip/top1/* <= 0.15",
    "flip/cloze-* <= 0.25",
    "flip/lambada-* <= 0.25",
    "acc/cloze-* >= reference - 0.15",
    "acc/lambada-* >= reference - 0.15",
    "ece <= reference + 0.05",
    "overconfidence <= reference + 0.05",
    "ece/cloze <= reference + 0.08",
    "overconfidence/cloze <= reference + 0.08",
    "shift/* <= 1.15",
    "noise/* <= reference + 0.15",
    "passkey/* >= reference - 0.5",
    "consistency/* >= reference - 0.5",
    "flip/passkey/* <= 0.5",
    "flip/longctx/* <= 0.05",
    "acc/instruct >= reference - 0.25",
    "flip/instruct <= 0.34",
    "recall@10/teacher >= 0.8",
    "spearman/teacher >= 0.9",
)

_FULL_CLOZE = Cloze(n=200)
SUITES: dict[str, Suite] = {
    "default": Suite(
        "default",
        (  # sized for <= 3 min on 2 cores with the reference; "full" has a few hundred items
            Tail(windows=2),
            DomainShift(windows=2),
            Cloze(n=20),
            Lambada(n=20, context_words=32),
            Calibration(),
            Noise(n=4),
            LongContext(lengths=(256, 1024, 2048), n=1),
            Capability(n=9, max_new_tokens=16),
            Retrieval(),
        ),
        DEFAULT_GATES,
        "every task at a size that fits a recipe run (<= 3 min for a 135M model on 2 cores)",
    ),
    "long": Suite(
        "long",
        (LongContext(lengths=(1024, 2048, 4096, 8192), n=3, kv_bits=(8, 4)),),
        ("passkey/* >= reference - 0.34", "consistency/* >= reference - 0.34"),
        "passkey and consistency up to an 8k window, with the KV cache fp, int8 and int4",
    ),
    "full": Suite(
        "full",
        (
            Tail(windows=16),
            DomainShift(windows=16),
            _FULL_CLOZE,
            Lambada(n=150),
            Calibration(),
            Noise(n=32),
            LongContext(lengths=(512, 1024, 2048, 4096, 8192), n=4, kv_bits=(8, 4)),
            Capability(),
            Retrieval(n=256),
        ),
        DEFAULT_GATES,
        "the default tasks with a few hundred items each and contexts up to 8k (slow)",
    ),
    "encoder": Suite("encoder", (Retrieval(),), DEFAULT_GATES[-2:], "MiniLM-style encoders"),
}


def get_suite(name: str) -> Suite:
    """The suite called ``name``, or a clear error naming the ones that exist."""
    if name not in SUITES:
        raise ConfigError(
            f"unknown evaluation suite {name!r}",
            f"use one of: {', '.join(SUITES)} (or 'ppl' on the CLI for perplexity only)",
        )
    return SUITES[name]


@dataclass
class SuiteReport:
    """Every metric of the model (and the reference's), the gates' verdicts, what was skipped."""

    suite: str
    metrics: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(v["passed"] for v in self.verdicts)

    def failed(self) -> list[dict[str, Any]]:
        return [v for v in self.verdicts if not v["passed"]]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def known_metric(pattern: str) -> bool:
    """Whether a gate's metric (a name or glob) is one of the metric names (DEVELOPING.md)."""
    probe = pattern.replace("*", "x").replace("?", "x")
    return direction(probe) is not None


def check_gates(
    gates: Sequence[str | Gate],
    metrics: Mapping[str, float],
    reference: Mapping[str, float],
    *,
    strict_names: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Verdicts ``{metric, value, limit, passed, gate}`` for each metric a gate matches, and
    notes on gates that could not be judged. With ``strict_names`` a gate that matches no metric
    is an error (a misspelt name must not pass silently)."""
    verdicts, notes = [], []
    for spec in gates:
        g = Gate.parse(spec)
        names = [m for m in metrics if fnmatch.fnmatchcase(m, g.metric)]
        if not names:
            if strict_names:
                raise ConfigError(
                    f"gate {str(g)!r} names no metric this suite produced",
                    f"use one of: {', '.join(sorted(metrics))}",
                )
            continue
        for name in names:
            value = metrics[name]
            if g.relative and name not in reference:
                notes.append(f"gate {g}: no reference value of {name} (pass --reference)")
                continue
            verdicts.append(g.verdict(name, value, reference.get(name)))
    return verdicts, notes


def _with_overrides(task: TaskConfig, overrides: Mapping[str, Mapping[str, Any]]) -> TaskConfig:
    fields = {
        k: v for k, v in (overrides.get(task.name) or {}).items() if k in type(task).model_fields
    }
    return task.model_copy(update=fields) if fields else task


def _loaded(model: Any, tokenizer: Any) -> Any:
    from slimline.profile._resolve import resolve

    return resolve(model, tokenizer)


def run_suite(
    model: Any,
    *,
    suite: str | Suite = "default",
    reference: Any = None,
    tasks: Sequence[str | dict[str, Any] | TaskConfig] | None = None,
    gates: Sequence[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    limit: int | None = None,
    figures_dir: str | Path | None = None,
    tokenizer: Any = None,
    memo: dict | None = None,
) -> SuiteReport:
    """Run a suite on ``model`` (a ``LoadedModel``, name/path, or a ``LogitsEngine``) against
    ``reference``, then judge its gates (plus any extra ``gates``).

    ``tasks`` replaces the suite's task list; ``overrides`` maps a task name to field values
    (``{"tail": {"windows": 2}}``); ``limit`` caps the items of every task (smoke runs).
    ``memo``: a dict shared across calls that judge several models against one reference
    *engine* object: the reference's answers are computed once (the KL tail is always recomputed).
    """
    s = get_suite(suite) if isinstance(suite, str) else suite
    task_list = [make_task(t) for t in tasks] if tasks is not None else list(s.tasks)
    if not task_list:
        raise ConfigError(
            f"suite {s.name!r} has no tasks to run",
            f"name at least one task, e.g. tasks=['tail'] (known: {', '.join(sorted(_task_names()))})",
        )
    task_list = [_with_overrides(t, overrides or {}) for t in task_list]
    extra = list(gates or ())
    for g in extra:
        pattern = Gate.parse(g).metric
        if not known_metric(pattern):
            raise ConfigError(
                f"unknown metric {pattern!r} in gate {g!r}",
                "name a metric from DEVELOPING.md 'Metric names' (e.g. kl/p99/python-docs, "
                "flip/cloze-shakespeare, passkey/2048)",
            )
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1 (got {limit})", "pass --limit 1 or more")
    ctx = _context(model, reference, tokenizer, figures_dir, limit)
    if memo is not None:
        ctx.memo = memo
    ctx.memo["cloze-config"] = next((t for t in task_list if isinstance(t, Cloze)), None)
    report = SuiteReport(s.name)
    for task in track(task_list, f"suite {s.name}"):
        t0 = time.perf_counter()
        r = run_task(task, ctx)
        report.seconds[task.name] = round(time.perf_counter() - t0, 2)
        report.metrics.update(r.metrics)
        report.reference.update(r.reference)
        report.skipped += r.skipped
        report.figures += r.figures
    report.verdicts, notes = check_gates(list(s.gates), report.metrics, report.reference)
    v2, notes2 = check_gates(extra, report.metrics, report.reference, strict_names=True)
    report.verdicts += v2
    report.skipped += notes + notes2
    return report


def _task_names() -> list[str]:
    from slimline.eval.tasks import TASKS

    return list(TASKS)


def _context(
    model: Any, reference: Any, tokenizer: Any, figures_dir: Any, limit: int | None
) -> TaskContext:
    def side(m: Any, what: str) -> tuple[LogitsEngine | None, Any]:
        if m is None:
            return None, None
        if isinstance(m, LogitsEngine):
            loaded = getattr(m, "lm", None)
            if m.tokenizer is None:
                _no_tokenizer(what, m.name)
            return m, loaded
        lm = _loaded(m, tokenizer)
        if lm.tokenizer is None:
            _no_tokenizer(what, lm.source)
        return (as_engine(lm) if lm.kind == "causal-lm" else None), lm

    eng, lm = side(model, "model")
    ref_eng, ref_lm = side(reference, "reference")
    kind = getattr(lm, "kind", "causal-lm")
    if ref_lm is not None and getattr(ref_lm, "kind", kind) != kind:
        raise ConfigError(
            f"cannot compare a {kind} model with a {ref_lm.kind} reference",
            "pass a reference of the same kind",
        )
    if isinstance(eng, TorchEngine) and lm is not None:
        lm.model.eval()
    return TaskContext(
        model=eng,
        reference=ref_eng,
        loaded=lm,
        loaded_reference=ref_lm,
        figures_dir=Path(figures_dir) if figures_dir is not None else None,
        limit=limit,
    )


def _no_tokenizer(what: str, name: str) -> None:
    raise ConfigError(
        f"the {what} {name!r} has no tokenizer: evaluation tasks read text",
        "load it from a directory that holds its tokenizer files, or pass tokenizer=...",
    )
