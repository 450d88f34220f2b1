"""``_one_torch_thread``: an autouse fixture for test areas that run many tiny models. Import it
into an area's conftest (``from torch_threads import _one_torch_thread  # noqa: F401``) to use
it there; it is not in tests/conftest.py so that it does not apply to every area."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models: on 2 shared cores, intra-op threads cost more than they bring (a GPTQ of
    a 256-wide tiny llama measured 44 s with 2 threads under load, 0.6 s with 1)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
