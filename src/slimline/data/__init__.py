"""Text sources, tokenisation, packing and deterministic calibration / train / eval splits."""

from slimline.data.blocks import (
    calibration_blocks,
    eval_blocks,
    fingerprint,
    pack,
    sentences,
    token_ids,
    train_blocks,
)
from slimline.data.sources import BUILTIN, load_text, text_part

__all__ = [
    "BUILTIN",
    "calibration_blocks",
    "eval_blocks",
    "fingerprint",
    "load_text",
    "pack",
    "sentences",
    "text_part",
    "token_ids",
    "train_blocks",
]
