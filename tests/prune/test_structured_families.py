"""Structured removal on every family: equals the masked original, reloads in plain transformers.

Phi-3 keeps q/k/v in one ``qkv_proj`` and gate/up in one ``gate_up_proj``: head and channel
removal must cut the matching rows of each part. Gemma 3 adds post-norms, q/k norms, (1 + w)
RMSNorms and sliding layers; Qwen 3 q/k norms; Qwen 2 q/k/v biases.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from slimline.errors import UnsupportedArchitectureError
from slimline.models import tiny_model
from slimline.prune import (
    PruneHeads,
    PruneMlp,
    prune,
    remove_blocks,
    remove_heads,
    remove_mlp_channels,
)

CAUSAL = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "opt")


def _ids(n=2, t=20, seed=0):
    # 20 tokens: past Gemma's tiny sliding window (8), so local and global layers differ
    return torch.randint(0, 2000, (n, t), generator=torch.Generator().manual_seed(seed))


def _out(model, ids):
    with torch.no_grad():
        o = model(input_ids=ids)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


@torch.no_grad()
def _mask_and_remove(lm, op):
    """(pruned model, masked copy): zero the o columns of removed heads / the down columns of
    removed channels in the copy; drop the same block from both."""
    model, arch = lm.model, lm.arch
    masked = copy.deepcopy(model)
    hd = arch.head_dim(model.config)
    blocks = arch.blocks(masked)
    if op == "heads":
        plan = {0: [1, 3], 1: [0, 2], 2: [1, 2]}  # one query head from each of 2 kv groups
        for b, heads in plan.items():
            o = arch.linear(blocks[b], "o")
            for h in heads:
                o.weight[:, h * hd : (h + 1) * hd] = 0
        remove_heads(model, plan)
    elif op == "mlp":
        plan = {b: list(range(b, 128, 4)) for b in range(3)}  # 32 of 128 channels per block
        for b, cs in plan.items():
            arch.linear(blocks[b], "mlp_out").weight[:, cs] = 0
        remove_mlp_channels(model, plan)
    else:
        remove_blocks(model, [1])
        remove_blocks(masked, [1])
    return model, masked


@pytest.mark.parametrize(
    ("family", "op"),
    [(f, op) for f in CAUSAL for op in ("heads", "mlp", "blocks") if (f, op) != ("opt", "heads")],
)
def test_removal_equals_masking_and_reloads_in_transformers(family, op, tmp_path):
    lm = tiny_model(family, n_blocks=3, hidden=64, n_heads=4, n_kv_heads=2, intermediate=128)
    before = sum(p.numel() for p in lm.model.parameters())
    model, masked = _mask_and_remove(lm, op)
    assert sum(p.numel() for p in model.parameters()) < before
    ids = _ids()
    got = _out(model, ids)
    assert torch.allclose(got, _out(masked, ids), atol=1e-5)
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # plain transformers
    assert torch.allclose(_out(back, ids), got, atol=1e-5)
    cfg = back.config
    if op == "heads":
        assert cfg.num_attention_heads == 2
        assert getattr(cfg, "num_key_value_heads", 2) == 2
    if op == "mlp":
        assert getattr(cfg, "intermediate_size", getattr(cfg, "ffn_dim", None)) == 96
    if op == "blocks":
        assert cfg.num_hidden_layers == 2
        if getattr(cfg, "layer_types", None) is not None:
            assert cfg.layer_types == [lm.model.config.layer_types[i] for i in (0, 1)]


def test_bert_mlp_and_blocks_reload_heads_refused(tmp_path):
    lm = tiny_model("bert", n_blocks=3, hidden=64, n_heads=4, intermediate=128)
    model, masked = _mask_and_remove(lm, "mlp")
    remove_blocks(model, [0])
    remove_blocks(masked, [0])
    ids = _ids()
    assert torch.allclose(_out(model, ids), _out(masked, ids), atol=1e-5)
    model.save_pretrained(tmp_path)
    assert torch.allclose(
        _out(AutoModel.from_pretrained(tmp_path).eval(), ids), _out(model, ids), atol=1e-5
    )
    with pytest.raises(UnsupportedArchitectureError, match="hidden_size must divide"):
        remove_heads(tiny_model("bert").model, {0: [0], 1: [0]})


def test_opt_head_removal_is_refused_before_any_edit():
    lm = tiny_model("opt")
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with pytest.raises(UnsupportedArchitectureError, match="no head_dim field"):
        remove_heads(lm.model, {0: [0], 1: [0]})
    assert all(torch.equal(v, lm.model.state_dict()[k]) for k, v in state.items())


def test_gpt2_width_pruning_is_refused_with_the_reason():
    lm = tiny_model("gpt2")
    with pytest.raises(UnsupportedArchitectureError, match="Conv1D"):
        remove_mlp_channels(lm.model, {0: [0], 1: [0]})
    remove_blocks(lm.model, [0])  # whole blocks still go
    assert lm.model.config.n_layer == 1


@pytest.mark.parametrize("family", ["phi3", "gemma3_text"])
def test_structured_techniques_with_calibration_data(family):
    lm = tiny_model(family, n_blocks=2, hidden=64, n_heads=4, n_kv_heads=2, intermediate=128)
    ids = _ids(4, 32)
    rec = prune(lm, PruneHeads(amount=0.5), data=ids)
    assert rec["heads_removed_per_block"]["removed"] == 2
    rec = prune(lm, PruneMlp(amount=0.25, multiple_of=8), data=ids)
    assert lm.model.config.intermediate_size == 96
    assert torch.isfinite(_out(lm.model, ids)).all()
    if family == "phi3":
        attn = lm.model.model.layers[0].self_attn
        assert attn.qkv_proj.weight.shape == ((2 + 2 * 2) * 16, 64)  # 1 q head off each kv group
        assert lm.model.model.layers[0].mlp.gate_up_proj.weight.shape == (2 * 96, 64)
