from __future__ import annotations

import sys
from pathlib import Path

import pytest

RECIPE_TESTS = Path(__file__).resolve().parent.parent / "recipe"
sys.path.insert(0, str(RECIPE_TESTS))
import helpers  # noqa: E402  (the recipe tests' tiny model and test.rtn technique)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random llama saved as a Hugging Face directory, shared by the search tests."""
    return helpers.save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private slimline home (signing key + registry) per test."""
    h = tmp_path / "home"
    monkeypatch.setenv("SLIMLINE_HOME", str(h))
    return h


def search_recipe(model: Path, stages: list[dict], search: dict, **over) -> dict:
    """A tiny recipe with a search section: quality on 2 short windows, latency off."""
    rec = helpers.tiny_recipe(model, stages, search=search, **over)
    rec["eval"]["latency"] = None
    return rec
