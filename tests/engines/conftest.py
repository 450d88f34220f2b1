import pytest

from torch_threads import _one_torch_thread  # noqa: F401  (autouse in tests/engines)


@pytest.fixture(scope="session")
def llama_cpp():
    """llama-cpp-python is a project dependency (scripts/setup.sh installs it): not skipped."""
    import llama_cpp

    return llama_cpp
