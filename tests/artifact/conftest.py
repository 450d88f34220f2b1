"""Fixtures for artifact tests: an isolated SLIMLINE_HOME, tiny models, and a codec module."""

from __future__ import annotations

import pytest
import torch
from artifact_helpers import Int8RowLinear, tiny_llama
from torch import nn

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def slimline_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("slimline_home")
    monkeypatch.setenv("SLIMLINE_HOME", str(home))
    monkeypatch.setenv("SLIMLINE_QUIET", "1")
    return home


@pytest.fixture
def llama() -> nn.Module:
    return tiny_llama()


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from slimline.models import bundled_path

    return AutoTokenizer.from_pretrained(str(bundled_path("minilm-l6")), local_files_only=True)


@pytest.fixture
def saved(tmp_path, llama, minilm_tokenizer):
    """A signed artifact of a tiny Llama with one codec module; returns (info, model)."""
    from slimline.artifact import save_artifact
    from slimline.core import set_submodule

    set_submodule(
        llama,
        "model.layers.0.mlp.down_proj",
        Int8RowLinear.from_linear(llama.model.layers[0].mlp.down_proj),
    )
    info = save_artifact(
        llama,
        minilm_tokenizer,
        tmp_path / "art",
        manifest={
            "metrics": {"ppl/python-docs": 12.5},
            "recipe": {"stages": ["quant.test"]},
            "seed": 0,
        },
    )
    return info, llama
