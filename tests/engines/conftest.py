import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_bpe():
    """tests/export/tiny_bpe.py: tiny llama-family models with a 400-token BPE."""
    name = "slimline_tests_tiny_bpe"
    if name not in sys.modules:
        path = Path(__file__).parents[1] / "export" / "tiny_bpe.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def llama_cpp():
    """llama-cpp-python is a project dependency (scripts/setup.sh installs it): not skipped."""
    import llama_cpp

    return llama_cpp


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models: on 2 shared cores, intra-op threads cost more than they bring (a GPTQ of
    a 256-wide tiny llama measured 44 s with 2 threads under load, 0.6 s with 1)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
