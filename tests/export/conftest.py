import importlib.util
import sys
from pathlib import Path

import pytest


def _tiny_bpe():
    name = "slimline_tests_tiny_bpe"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("tiny_bpe.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def tiny_bpe():
    """The helper module: ``small_vocab_model(family, seed, spread)``, ``bpe_tokenizer()``."""
    return _tiny_bpe()


@pytest.fixture(scope="module")
def small_vocab_llama(tiny_bpe):
    return tiny_bpe.small_vocab_model("llama", spread=False)
