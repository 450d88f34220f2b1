"""slimline: compress and distill transformer models for constrained hardware, and prove with
measurements what each compression cost and bought.

The verbs are imported lazily so that ``import slimline`` stays cheap and never touches a GPU::

    from slimline import load_model, quantize, prune, evaluate, profile
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_VERBS = {
    "load_model": "slimline.models",
    "quantize": "slimline.quant",
    "prune": "slimline.prune",
    "distill": "slimline.distill",
    "evaluate": "slimline.eval",
    "profile": "slimline.profile",
    "run_recipe": "slimline.recipe",
    "Registry": "slimline.registry",
    "save_artifact": "slimline.artifact",
    "load_artifact": "slimline.artifact",
}

__all__ = ["__version__", *_VERBS]


def __getattr__(name: str) -> Any:
    mod = _VERBS.get(name)
    if mod is None:
        raise AttributeError(f"module 'slimline' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)
