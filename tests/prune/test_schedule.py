"""Gradual schedules: the cubic formula at known steps, and pruning inside a training loop."""

from __future__ import annotations

import pytest
import torch

from slimline.errors import ConfigError
from slimline.models import tiny_model
from slimline.prune import PruningSchedule, get_mask, keep_masks, sparsity_at


def test_cubic_schedule_matches_zhu_and_gupta():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with s_i=0, s_f=0.8, t0=100, end=1100
    kw = {"final": 0.8, "start": 100, "end": 1100, "kind": "cubic"}
    assert sparsity_at(0, **kw) == 0.0
    assert sparsity_at(100, **kw) == 0.0
    assert sparsity_at(600, **kw) == pytest.approx(0.8 * (1 - 0.5**3))  # 0.7
    assert sparsity_at(350, **kw) == pytest.approx(0.8 * (1 - 0.75**3))  # 0.4625
    assert sparsity_at(1100, **kw) == 0.8
    assert sparsity_at(5000, **kw) == 0.8


def test_linear_and_one_shot_schedules():
    assert sparsity_at(50, final=0.5, start=0, end=100, kind="linear") == pytest.approx(0.25)
    assert sparsity_at(
        60, final=0.6, initial=0.2, start=20, end=100, kind="linear"
    ) == pytest.approx(0.4)
    assert sparsity_at(10, final=0.5, start=10, end=100, kind="one_shot") == 0.5
    assert sparsity_at(9, final=0.5, start=10, end=100, kind="one_shot") == 0.0


def test_bad_schedules_are_refused():
    with pytest.raises(ConfigError):
        PruningSchedule(final_sparsity=1.0)
    with pytest.raises(ConfigError):
        PruningSchedule(start_step=10, end_step=5)
    with pytest.raises(ConfigError):
        PruningSchedule(every=0)


def test_schedule_prunes_gradually_during_training_and_masks_hold():
    lm = tiny_model("llama")
    model = lm.model
    model.train()
    sched = PruningSchedule(final_sparsity=0.6, start_step=0, end_step=8, every=2, kind="cubic")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    keep_masks(opt, model)
    ids = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(0))
    seen = []
    for step in range(10):
        rec = sched.step(model, step)
        if rec:
            seen.append(rec)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        q = model.model.layers[0].self_attn.q_proj
        if step >= 2:  # what is masked stays exactly zero after every optimizer step
            assert (q.weight[~get_mask(q)] == 0).all()
    targets = [r["target"] for r in seen]
    assert [r["step"] for r in seen] == [2, 4, 6, 8]  # step 0 has target 0: nothing to do
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.6)
    assert seen[-1]["sparsity"] == pytest.approx(0.6, abs=1e-4)  # per-layer rounding
    assert sched.step(model, 9) is None
