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


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models: on 2 shared cores, intra-op threads cost more than they bring (a GPTQ of
    a 256-wide tiny llama measured 44 s with 2 threads under load, 0.6 s with 1)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
