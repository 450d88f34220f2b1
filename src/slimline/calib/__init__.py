"""The layer-by-layer calibration engine (one block in memory at a time)."""

from slimline.calib.buffer import ActivationBuffer, ActivationStats, activation_limit
from slimline.calib.engine import BlockStep, capture_inputs, run_blocks

__all__ = [
    "ActivationBuffer",
    "ActivationStats",
    "BlockStep",
    "activation_limit",
    "capture_inputs",
    "run_blocks",
]
