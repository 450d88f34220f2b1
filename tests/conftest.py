"""Shared fixtures: tiny random models of each family, the truncated and full real models, data."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SLIMLINE_QUIET", "1")
torch.set_num_threads(1)

FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "opt", "bert")


@pytest.fixture(scope="session")
def smollm2():
    """The full real SmolLM2-135M-Instruct (fp32, converted once into the cache)."""
    from slimline.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_2blocks(smollm2):
    """The first 2 blocks of real SmolLM2: real weights, fast."""
    from slimline.models import truncate

    return truncate(smollm2, 2)


@pytest.fixture(scope="session")
def minilm():
    from slimline.models import load_model

    return load_model("minilm-l6")


@pytest.fixture
def tiny_llama():
    from slimline.models import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random llama saved as an HF directory, for CLI tests that take a MODEL path."""
    from slimline.models import tiny_model

    lm = tiny_model("llama")
    d = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(params=FAMILIES)
def tiny_any(request):
    from slimline.models import tiny_model

    return tiny_model(request.param)


@pytest.fixture(scope="session")
def calib_small(smollm2):
    """8 calibration windows of 64 tokens from python-docs (SmolLM2 tokenizer)."""
    from slimline.data import calibration_blocks

    return calibration_blocks(smollm2.tokenizer, "python-docs", n=8, seq_len=64, seed=0)


@pytest.fixture(scope="session")
def tiny_bpe():
    """tests/export/tiny_bpe.py, the helper module: tiny llama-family models with a 400-token BPE
    (``small_vocab_model(family, seed, spread)``, ``bpe_tokenizer()``), for GGUF and engine tests."""
    name = "slimline_tests_tiny_bpe"
    if name not in sys.modules:
        path = Path(__file__).parent / "export" / "tiny_bpe.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]
