"""Fixtures for registry tests: three signed artifacts in a line of descent, and a fresh home
per test that trusts their signing key."""

from __future__ import annotations

import pytest
import torch

from tiny_hf import tiny_causal_lm

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lineage_artifacts(tmp_path_factory):
    """base -> child -> grandchild (same tiny weights, different manifests, so distinct digests)."""
    from slimline.artifact import save_artifact, signing_key
    from slimline.artifact.keys import public_key_b64

    root = tmp_path_factory.mktemp("artifacts")
    key = signing_key(root / "author-home")
    model = tiny_causal_lm(seed=0)
    base = save_artifact(
        model,
        None,
        root / "base",
        key=key,
        manifest={
            "metrics": {"ppl/python-docs": 12.8, "size/bytes": 1000},
            "recipe": {"stages": []},
        },
    )
    child = save_artifact(
        model,
        None,
        root / "child",
        key=key,
        parent=base.path,
        manifest={
            "metrics": {"ppl/python-docs": 13.1, "size/bytes": 400},
            "recipe": {"stages": ["quant.rtn"]},
            "data_fingerprint": "sha256:abc",
        },
    )
    grand = save_artifact(
        model,
        None,
        root / "grand",
        key=key,
        parent=child.path,
        manifest={
            "metrics": {"ppl/python-docs": 16.0, "size/bytes": 300},
            "recipe": {"stages": ["quant.rtn", "prune.wanda"]},
        },
    )
    return {"base": base, "child": child, "grand": grand, "pub": public_key_b64(key.public_key())}


@pytest.fixture
def home(tmp_path, monkeypatch, lineage_artifacts):
    from slimline.artifact import trust_key

    h = tmp_path / "home"
    monkeypatch.setenv("SLIMLINE_HOME", str(h))
    monkeypatch.setenv("SLIMLINE_QUIET", "1")
    trust_key(lineage_artifacts["pub"], home=h)
    return h


@pytest.fixture
def reg(home):
    from slimline.registry import Registry

    return Registry(home)
