"""Serving with a safe fallback: a compressed model backed by a trustworthy one."""

from slimline.serve.cascade import Cascade, CascadeConfig, CascadeResult, Decision, confidence

__all__ = ["Cascade", "CascadeConfig", "CascadeResult", "Decision", "confidence"]
