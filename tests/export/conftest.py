import pytest

from torch_threads import _one_torch_thread  # noqa: F401  (autouse in tests/export)


@pytest.fixture(scope="module")
def small_vocab_llama(tiny_bpe):
    return tiny_bpe.small_vocab_model("llama", spread=False)
