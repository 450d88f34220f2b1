"""The layer-by-layer calibration engine (one block in memory at a time)."""

from slimline.calib.engine import BlockStep, capture_inputs, run_blocks

__all__ = ["BlockStep", "capture_inputs", "run_blocks"]
