"""Sensitivity sweep, its table and plot, and non-uniform allocations under a global budget."""

from __future__ import annotations

import pytest
import torch

from slimline.errors import ConfigError
from slimline.models import tiny_model
from slimline.prune import Wanda, allocate, owl_allocation, prune, sensitivity_sweep


def _ids():
    return torch.randint(0, 49152, (4, 32), generator=torch.Generator().manual_seed(0))


def test_sweep_errors_grow_with_sparsity_and_leave_the_model_alone(tmp_path):
    lm = tiny_model("llama")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    sw = sensitivity_sweep(lm, _ids(), sparsities=[0.2, 0.5, 0.8])
    assert len(sw.errors) == 14
    for name, errs in sw.errors.items():
        assert errs == sorted(errs), name
        assert errs[0] > 0
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    table = sw.table()
    assert "model.layers.0.mlp.down_proj" in table and "50%" in table
    png = sw.plot(tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_allocation_meets_the_budget_and_beats_uniform_on_summed_error():
    lm = tiny_model("llama")
    sw = sensitivity_sweep(lm, _ids(), sparsities=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    alloc = allocate(sw, 0.5)
    total = sum(sw.params.values())
    mean = sum(alloc[n] * sw.params[n] for n in alloc) / total
    assert mean >= 0.5 - 1e-9
    grid = [0.0, *sw.sparsities]
    err = sum(0.0 if alloc[n] == 0 else sw.errors[n][grid.index(alloc[n]) - 1] for n in alloc)
    uniform = sum(sw.errors[n][4] for n in alloc)
    assert err < uniform
    assert len(set(alloc.values())) > 1  # really non-uniform
    rec = prune(lm, Wanda(sparsity=0.5, sparsity_per_layer=alloc), data=_ids())
    assert rec["sparsity"] == pytest.approx(mean, abs=0.01)
    with pytest.raises(ConfigError):
        allocate(sw, 0.95)


def test_owl_keeps_the_global_budget():
    lm = tiny_model("llama", n_blocks=3)
    alloc = owl_allocation(lm, _ids(), 0.5, lam=0.08)
    params = {n: lm.model.get_submodule(n).weight.numel() for n in alloc}
    mean = sum(alloc[n] * params[n] for n in alloc) / sum(params.values())
    assert mean == pytest.approx(0.5, abs=1e-6)
    assert max(alloc.values()) - min(alloc.values()) == pytest.approx(0.16, abs=1e-6)
    with pytest.raises(ConfigError):
        owl_allocation(lm, _ids(), 1.2)
