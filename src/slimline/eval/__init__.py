"""Quality metrics that catch fragile compression: perplexity, bits per byte, calibration (ECE),
agreement with a reference (KL, top-1), and for encoders embedding cosine and retrieval agreement.
``evaluate(model, data=[...], reference=...) -> dict[str, float]``."""

from slimline.eval.api import SUITES, dataset_name, evaluate, hf_perplexity, sentence_embeddings
from slimline.eval.metrics import (
    CalibrationBins,
    expected_calibration_error,
    kl_per_token,
    mean_cosine,
    neighbour_recall,
    token_nll,
    top1_agree,
)

__all__ = [
    "SUITES",
    "CalibrationBins",
    "dataset_name",
    "evaluate",
    "expected_calibration_error",
    "hf_perplexity",
    "kl_per_token",
    "mean_cosine",
    "neighbour_recall",
    "sentence_embeddings",
    "token_nll",
    "top1_agree",
]
