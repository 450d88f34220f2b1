"""Feeding a KV cache to a transformers model under both names it has had: ``cache`` (5.24+; the
old ``past_key_values`` warns on every call and goes in 5.40) and ``past_key_values`` (older)."""

from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.cache
def _cache_kw(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """``model(**with_cache(model, cache), ...)``: the cache under the name ``model`` takes."""
    return {_cache_kw(type(model)): cache}


def cache_of(out: Any) -> Any:
    """The updated cache from a model output, whichever name it carries."""
    return out["cache"] if "cache" in out else out["past_key_values"]
