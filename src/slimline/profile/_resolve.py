"""Accept what users have at hand: a LoadedModel, a model spec to load, or a bare transformers model."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from slimline.errors import InputError
from slimline.models import LoadedModel, get_arch, load_model


def resolve(model_or_loaded: Any, tokenizer: Any = None) -> LoadedModel:
    """A ``LoadedModel`` for ``model_or_loaded``; a bare module is wrapped with ``tokenizer``."""
    if isinstance(model_or_loaded, LoadedModel):
        return model_or_loaded
    if isinstance(model_or_loaded, str | os.PathLike):
        return load_model(model_or_loaded)
    if isinstance(model_or_loaded, nn.Module):
        arch = get_arch(model_or_loaded)
        return LoadedModel(
            model_or_loaded, tokenizer, arch, arch.kind, type(model_or_loaded).__name__
        )
    raise InputError(
        f"cannot measure a {type(model_or_loaded).__name__}",
        "pass a LoadedModel, a transformers model, or a model name/path for load_model",
    )
