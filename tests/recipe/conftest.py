from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import helpers


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random llama saved as a Hugging Face directory, shared by the recipe tests."""
    return helpers.save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private slimline home (signing key + registry) per test."""
    h = tmp_path / "home"
    monkeypatch.setenv("SLIMLINE_HOME", str(h))
    return h
