"""Bounded calibration activations (issue 15): under a limit the engine keeps at most that many
bytes of hidden states in memory, spills the rest to a temp dir that is gone afterwards, and the
compressed model is exactly what the unbounded run gives."""

from __future__ import annotations

import tempfile

import pytest
import torch

from slimline.calib import activation_limit, run_blocks
from slimline.calib.buffer import LIMIT_ENV, ActivationBuffer, ActivationStats
from slimline.errors import ConfigError
from slimline.models import tiny_model
from slimline.quant import quantize
from slimline.quant.gptq import Gptq


@pytest.fixture
def ids():
    return torch.randint(0, 49152, (8, 64), generator=torch.Generator().manual_seed(0))


def test_gptq_under_a_limit_is_exact_and_bounded(ids, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # one batch of 2 x 64 tokens x 64 wide fp32 = 32 KiB; the run holds 4 + 4 batches at once
    batch = 2 * 64 * 64 * 4
    cfg = Gptq(bits=4, group_size=32, batch_size=2)
    free = tiny_model("llama", n_blocks=2)
    with activation_limit(None) as unbounded:
        quantize(free.model, cfg, data=ids)
    bounded_lm = tiny_model("llama", n_blocks=2)
    with activation_limit(3 * batch / 2**20) as bounded:
        quantize(bounded_lm.model, cfg, data=ids)
        assert bounded.spill_dir is not None and bounded.spill_dir.parent == tmp_path
    a, b = free.model.state_dict(), bounded_lm.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert unbounded.peak_resident_bytes >= 8 * batch and unbounded.spilled_bytes == 0
    assert bounded.peak_resident_bytes <= 3 * batch
    # capture: 3 of 4 batches fit, 1 spills; block 0's outputs find the budget full (4 spill);
    # block 1's come after block 0's inputs were freed (3 fit, 1 spills). The statistics pass
    # keeps no outputs, so it spills nothing.
    assert bounded.spilled_bytes == 6 * batch
    assert list(tmp_path.glob("slimline-activations-*")) == []  # the spill dir is removed
    assert bounded.summary()["activation_peak_mb"] <= 3 * batch / 2**20


def test_buffer_reads_back_what_was_spilled(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stats = ActivationStats(limit_bytes=80)
    buf = ActivationBuffer(stats)
    xs = [torch.randn(5, 3), torch.randn(5, 3).to(torch.bfloat16), torch.randn(2)]
    for x in xs:
        buf.append(x)
    assert stats.resident_bytes == 60 + 8 and stats.spilled_bytes == 30  # the bf16 one spilled
    assert len(buf) == 3 and all(torch.equal(x, y) for x, y in zip(xs, buf, strict=True))
    buf.close()
    assert stats.resident_bytes == 0 and list(stats.spill_dir.iterdir()) == []
    stats.cleanup()


def test_engine_reads_the_env_limit_and_refuses_nonsense(ids, monkeypatch):
    lm = tiny_model("llama", n_blocks=2)
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(ConfigError, match=LIMIT_ENV):
        run_blocks(lm.model, ids, lambda step: None)
    monkeypatch.setenv(LIMIT_ENV, "0.01")
    seen = []
    run_blocks(lm.model, ids, lambda step: seen.append(type(step.inputs).__name__), batch_size=2)
    assert seen == ["ActivationBuffer", "ActivationBuffer"]
