"""Quality metrics that catch fragile compression: perplexity, bits per byte, calibration (ECE),
agreement with a reference (KL, top-1), and for encoders embedding cosine and retrieval agreement.
``evaluate(model, data=[...], reference=...) -> dict[str, float]``.

Suites of tasks with gates (tail KL, cloze/last-word flips, long context, noise, domain shift,
calibration, instruct checks, encoder retrieval): ``run_suite(model, reference=..., suite="default")
-> SuiteReport``; tasks read models only through ``LogitsEngine`` (``TorchEngine`` today)."""

from slimline.eval.api import SUITES, dataset_name, evaluate, hf_perplexity, sentence_embeddings
from slimline.eval.engine import LogitsEngine, TorchEngine, as_engine
from slimline.eval.metrics import (
    CalibrationBins,
    expected_calibration_error,
    kl_per_token,
    mean_cosine,
    neighbour_recall,
    token_nll,
    top1_agree,
)
from slimline.eval.suites import SUITES as SUITE_REGISTRY
from slimline.eval.suites import Gate, Suite, SuiteReport, check_gates, get_suite, run_suite
from slimline.eval.tasks import TASKS, TaskConfig, TaskContext, TaskResult, make_task, register_task

__all__ = [
    "SUITES",
    "SUITE_REGISTRY",
    "TASKS",
    "CalibrationBins",
    "Gate",
    "LogitsEngine",
    "Suite",
    "SuiteReport",
    "TaskConfig",
    "TaskContext",
    "TaskResult",
    "TorchEngine",
    "as_engine",
    "check_gates",
    "dataset_name",
    "evaluate",
    "expected_calibration_error",
    "get_suite",
    "hf_perplexity",
    "kl_per_token",
    "make_task",
    "mean_cosine",
    "neighbour_recall",
    "register_task",
    "run_suite",
    "sentence_embeddings",
    "token_nll",
    "top1_agree",
]
