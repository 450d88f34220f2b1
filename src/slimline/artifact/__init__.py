"""Artifacts: a signed directory (config, tokenizer, safetensors weights, ``slimline.json``
manifest, ``slimline.sig``) that is verified before anything in it is built. See docs/ARTIFACT.md.

Verification and keys are torch-free; ``save_artifact``/``load_artifact`` import torch on first use.
"""

from __future__ import annotations

from typing import Any

from slimline.artifact.atomic import atomic_dir, clean_stale, is_partial_output, temp_target
from slimline.artifact.keys import home_dir, signing_key, trust_key, trusted_keys
from slimline.artifact.spec import (
    FORMAT_VERSION,
    MANIFEST,
    SIGNATURE,
    WEIGHTS,
    artifact_evidence,
    canonical_bytes,
    is_artifact,
    manifest_digest,
    read_manifest,
)
from slimline.artifact.verify import VerifyReport, verify_artifact

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "SIGNATURE",
    "WEIGHTS",
    "ArtifactInfo",
    "VerifyReport",
    "artifact_digest",
    "artifact_evidence",
    "atomic_dir",
    "canonical_bytes",
    "clean_stale",
    "home_dir",
    "is_artifact",
    "is_partial_output",
    "load_artifact",
    "manifest_digest",
    "read_manifest",
    "save_artifact",
    "signing_key",
    "temp_target",
    "trust_key",
    "trusted_keys",
    "verify_artifact",
]

_TORCH_SIDE = {"save_artifact", "load_artifact", "ArtifactInfo", "environment"}


def artifact_digest(path: Any) -> str:
    """The digest (sha256 of the canonical manifest) of the artifact at ``path``; no verification."""
    return manifest_digest(read_manifest(path))


def __getattr__(name: str) -> Any:
    # Lazy: the registry verifies artifacts in worker processes that should not import torch.
    if name in _TORCH_SIDE:
        from slimline.artifact import io

        return getattr(io, name)
    raise AttributeError(f"module 'slimline.artifact' has no attribute {name!r}")
