"""Structured pruning: exact physical removal, GQA consistency, valid HF configs, replay, errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from slimline.errors import ConfigError
from slimline.models import tiny_model
from slimline.prune import (
    PruneBlocks,
    PruneHeads,
    PruneMlp,
    prune,
    rank_blocks,
    remove_blocks,
    remove_heads,
    remove_mlp_channels,
    replay,
)
from slimline.prune.structured import plan_head_removal


def _gqa(seed=0):
    # 6 query heads in 2 kv groups of 3, head_dim 16, 3 blocks
    return tiny_model(
        "llama", n_blocks=3, hidden=96, n_heads=6, n_kv_heads=2, intermediate=128, seed=seed
    )


def _ids(n=2, t=24, seed=0):
    return torch.randint(0, 49152, (n, t), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def _zero_heads(model, plan, hd=16):
    for b, heads in plan.items():
        o = model.model.layers[b].self_attn.o_proj
        for h in heads:
            o.weight[:, h * hd : (h + 1) * hd] = 0


@pytest.mark.parametrize(
    "plan",
    [
        {0: [1, 4], 1: [0, 5], 2: [2, 3]},  # one query head from each kv group
        {0: [0, 1, 2], 1: [3, 4, 5], 2: [3, 4, 5]},  # one whole kv group
    ],
)
def test_head_removal_equals_zeroing_the_same_heads(plan):
    lm = _gqa()
    ids = _ids()
    masked = copy.deepcopy(lm.model)
    _zero_heads(masked, plan)
    remove_heads(lm.model, plan)
    assert torch.allclose(_logits(lm.model, ids), _logits(masked, ids), atol=1e-5)
    cfg = lm.model.config
    assert cfg.num_attention_heads == 6 - len(plan[0]) and cfg.head_dim == 16
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    attn = lm.model.model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (cfg.num_attention_heads * 16, 96)
    assert attn.k_proj.weight.shape == (cfg.num_key_value_heads * 16, 96)
    assert attn.num_key_value_groups == cfg.num_attention_heads // cfg.num_key_value_heads


def test_uneven_gqa_plans_are_refused_and_the_model_is_untouched():
    lm = _gqa()
    before = _state(lm.model)
    bad = [
        {0: [0], 1: [0], 2: [0]},  # group 0 keeps 2 heads, group 1 keeps 3
        {0: [0, 1, 2, 3, 4, 5], 1: [0], 2: [0]},  # all heads of block 0
        {0: [9], 1: [0], 2: [0]},  # no head 9
        {0: [1, 4], 1: [1, 4]},  # block 2 missing
        {0: [1, 4], 1: [0, 1, 2], 2: [1, 4]},  # different counts per block
    ]
    for plan in bad:
        with pytest.raises(ConfigError):
            remove_heads(lm.model, plan)
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert lm.model.config.num_attention_heads == 6


def test_head_plans_respect_groups():
    scores = torch.arange(18, dtype=torch.float).reshape(3, 6)
    q = plan_head_removal(scores, 2, amount=0.34, unit="query")
    assert all(v == [0, 3] for v in q.values())  # the weakest head of each group of 3
    g = plan_head_removal(scores, 2, remove=3, unit="kv_group")
    assert all(v == [0, 1, 2] for v in g.values())
    with pytest.raises(ConfigError):
        plan_head_removal(scores, 2, remove=6)  # all heads
    with pytest.raises(ConfigError):
        plan_head_removal(scores, 2, remove=7)  # more than exist
    with pytest.raises(ConfigError):
        plan_head_removal(scores, 2, remove=2, unit="kv_group")  # not a whole group


def test_mlp_removal_equals_zeroing_the_same_channels():
    lm = _gqa()
    ids = _ids()
    plan = {b: list(range(b, 128, 4)) for b in range(3)}  # 32 channels per block
    masked = copy.deepcopy(lm.model)
    with torch.no_grad():
        for b, ch in plan.items():
            masked.model.layers[b].mlp.down_proj.weight[:, ch] = 0
    remove_mlp_channels(lm.model, plan)
    assert torch.allclose(_logits(lm.model, ids), _logits(masked, ids), atol=1e-5)
    assert lm.model.config.intermediate_size == 96
    mlp = lm.model.model.layers[1].mlp
    assert mlp.gate_proj.weight.shape == (96, 96) and mlp.down_proj.weight.shape == (96, 96)


def test_bert_mlp_removal_is_exact():
    lm = tiny_model("bert", n_blocks=2, hidden=64, n_heads=4, intermediate=128)
    ids = _ids(t=16) % 30000
    masked = copy.deepcopy(lm.model)
    plan = {0: list(range(0, 128, 2)), 1: list(range(1, 128, 2))}
    with torch.no_grad():
        for b, ch in plan.items():
            masked.encoder.layer[b].output.dense.weight[:, ch] = 0
    remove_mlp_channels(lm.model, plan)
    with torch.no_grad():
        a = lm.model(input_ids=ids).last_hidden_state
        b = masked(input_ids=ids).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)
    assert lm.model.config.intermediate_size == 64


def test_pruned_model_saves_and_loads_in_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    lm = _gqa()
    ids = _ids()
    prune(lm, PruneHeads(amount=0.34), data=ids)  # 1 query head per group: 6 -> 4
    prune(lm, PruneMlp(amount=0.25), data=ids)  # 128 -> 96
    rec = prune(lm, PruneBlocks(remove=1), data=ids)  # 3 -> 2 blocks
    assert rec["params_after"] < rec["params_before"]
    lm.model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    c = again.config
    assert (
        c.num_attention_heads,
        c.num_key_value_heads,
        c.intermediate_size,
        c.num_hidden_layers,
    ) == (
        4,
        2,
        96,
        2,
    )
    assert torch.allclose(_logits(again, ids), _logits(lm.model, ids), atol=1e-5)
    assert sum(p.numel() for p in again.parameters()) == sum(
        p.numel() for p in lm.model.parameters()
    )


def test_block_removal_renumbers_layer_idx_and_keeps_the_kv_cache_right():
    lm = _gqa()
    remove_blocks(lm.model, [1])
    layers = lm.model.model.layers
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1]
    assert lm.model.config.num_hidden_layers == 2
    ids = _ids(n=1, t=8)
    with torch.no_grad():
        cached = lm.model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
        plain = lm.model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, plain)


def test_rank_blocks_finds_a_block_that_does_nothing():
    lm = _gqa()
    with torch.no_grad():  # block 1 becomes the identity on the residual stream
        lm.model.model.layers[1].self_attn.o_proj.weight.zero_()
        lm.model.model.layers[1].mlp.down_proj.weight.zero_()
    ranking = rank_blocks(lm.model, _ids(n=4))
    assert ranking[0]["block"] == 1
    assert (
        ranking[0]["distance"] < 1e-4
    )  # float rounding of arccos near cos = 1 (measured 4e-5 in fp32)
    assert ranking[1]["distance"] > 0.01
    runs = rank_blocks(lm.model, _ids(n=4), n=2)
    assert {r["block"] for r in runs} == {0, 1}
    rec = prune(lm, PruneBlocks(remove=1), data=_ids(n=4))
    assert rec["edits"] == [{"op": "remove_blocks", "blocks": [1]}]


def test_replaying_the_edit_log_rebuilds_the_same_model():
    lm = _gqa()
    parent = copy.deepcopy(lm.model)
    ids = _ids()
    log = []
    log += prune(lm, PruneHeads(remove=2), data=ids)["edits"]
    log += prune(lm, PruneMlp(amount=0.5, importance="magnitude"))["edits"]
    log += prune(lm, PruneBlocks(blocks=[0]))["edits"]
    replay(parent, log)
    a, b = parent.state_dict(), lm.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_impossible_structured_requests_fail_before_editing():
    lm = _gqa()
    before = _state(lm.model)
    with pytest.raises(ConfigError):
        prune(lm, PruneBlocks(remove=3), data=_ids())  # = depth
    with pytest.raises(ConfigError):
        remove_blocks(lm.model, [0, 1, 2])
    with pytest.raises(ConfigError):
        remove_blocks(lm.model, [5])
    with pytest.raises(ConfigError):
        prune(lm, PruneHeads(remove=6), data=_ids())
    with pytest.raises(ConfigError):
        PruneHeads(amount=1.0)
    with pytest.raises(ConfigError):
        PruneMlp(amount=0.0)
    with pytest.raises(ConfigError):
        remove_mlp_channels(lm.model, {b: list(range(128)) for b in range(3)})
    after = lm.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_head_count_rounded_for_gqa_is_reported_not_silent():
    # 6 query heads in 2 kv groups: 17% asks for 1 head per block, GQA can only drop 1 per
    # group, so 2 go; the user is told and the record says so. 34% (2 heads) fits exactly.
    ids = _ids()
    lm = _gqa()
    with pytest.warns(UserWarning, match=r"removed 2 \(33%\)"):
        rec = prune(lm, PruneHeads(amount=0.17), data=ids)
    assert rec["heads_removed_per_block"] == {"asked": 1, "removed": 2, "of": 6}
    assert lm.model.config.num_attention_heads == 4
    exact = _gqa()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = prune(exact, PruneHeads(amount=0.34), data=ids)
    assert rec["heads_removed_per_block"] == {"asked": 2, "removed": 2, "of": 6}
