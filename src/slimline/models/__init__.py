"""Load any model (bundled name, HF dir, GGUF, sentence-transformers dir, artifact, cached id)
and describe where its layers live."""

from slimline.models.arch import Arch, get_arch, supported_families
from slimline.models.bundled import BUNDLED, bundled_path, cache_dir
from slimline.models.load import LoadedModel, load_model
from slimline.models.tiny import embed, tiny_config, tiny_model, truncate

__all__ = [
    "BUNDLED",
    "Arch",
    "LoadedModel",
    "bundled_path",
    "cache_dir",
    "embed",
    "get_arch",
    "load_model",
    "supported_families",
    "tiny_config",
    "tiny_model",
    "truncate",
]
