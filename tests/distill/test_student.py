"""Students cut from the teacher: block choice, config + layer_idx rewritten, weights inherited."""

from __future__ import annotations

import pytest
import torch

from slimline.distill import (
    angular_importance,
    build_student,
    choose_blocks,
    drop_blocks,
    parse_student_spec,
    shrink_mlp,
    student_from_config,
)
from slimline.errors import ConfigError
from slimline.models import load_model, tiny_model


def test_choose_blocks():
    assert choose_blocks(30, keep=20)[0] == 0 and choose_blocks(30, keep=20)[-1] == 29
    assert len(choose_blocks(30, keep=20)) == 20
    assert choose_blocks(6, keep=3) == [0, 2, 5]  # round(0, 2.5, 5): evenly spaced, ends kept
    assert choose_blocks(6, drop_every=3) == [0, 1, 3, 4]
    assert choose_blocks(4, keep=2, importance=[0.9, 0.1, 0.5, 0.3]) == [0, 2]
    for bad in ({"keep": 0}, {"keep": 7}, {"drop_every": 1}, {}, {"keep": 2, "drop_every": 2}):
        with pytest.raises(ConfigError):
            choose_blocks(6, **bad)


def test_drop_blocks_rewrites_config_and_layer_idx(tmp_path):
    t = tiny_model("llama", n_blocks=6)
    s = drop_blocks(t, keep=3)
    assert s.model.config.num_hidden_layers == 3
    assert s.extra["student"]["kept_blocks"] == [0, 2, 5]
    blocks = s.arch.blocks(s.model)
    assert [b.self_attn.layer_idx for b in blocks] == [0, 1, 2]
    # weights are the teacher's blocks 0, 2, 5, copied (teacher untouched)
    tb = t.arch.blocks(t.model)
    assert torch.equal(blocks[1].mlp.up_proj.weight, tb[2].mlp.up_proj.weight)
    assert blocks[1].mlp.up_proj.weight is not tb[2].mlp.up_proj.weight
    assert t.model.config.num_hidden_layers == 6
    # generation with the KV cache works (layer_idx indexes the cache)
    ids = torch.randint(0, 1000, (1, 5))
    out = s.model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape[1] == 9
    # saves and reloads as a native model
    s.model.save_pretrained(tmp_path, safe_serialization=True)
    s.tokenizer.save_pretrained(str(tmp_path))
    back = load_model(tmp_path)
    assert back.model.config.num_hidden_layers == 3
    with torch.no_grad():
        assert torch.allclose(back.model(ids).logits, s.model(ids).logits, atol=1e-5)


def test_drop_blocks_encoder():
    t = tiny_model("bert", n_blocks=6)
    s = drop_blocks(t, drop_every=2)
    assert s.model.config.num_hidden_layers == 3
    assert [b.attention.self.layer_idx for b in s.arch.blocks(s.model)] == [0, 1, 2]


def test_angular_importance_ranks_a_near_identity_block_last():
    t = tiny_model("llama", n_blocks=4)
    # make block 2 nearly an identity: its residual branches write almost nothing
    b = t.arch.blocks(t.model)[2]
    with torch.no_grad():
        b.self_attn.o_proj.weight.mul_(1e-4)
        b.mlp.down_proj.weight.mul_(1e-4)
    ids = torch.randint(0, 1000, (2, 16))
    scores = angular_importance(t, ids)
    assert len(scores) == 4
    assert min(range(4), key=scores.__getitem__) == 2
    s = build_student(t, {"keep": 3, "importance": "angular"}, calib=ids)
    assert s.extra["student"]["kept_blocks"] == [0, 1, 3]


def test_shrink_mlp_physically_removes_channels():
    t = tiny_model("llama", n_blocks=2, hidden=64, intermediate=128)
    s = shrink_mlp(t, 0.5)
    b = s.arch.blocks(s.model)[0]
    assert b.mlp.up_proj.weight.shape == (64, 64)
    assert b.mlp.down_proj.weight.shape == (64, 64)
    assert s.model.config.intermediate_size == 64
    with torch.no_grad():
        s.model(torch.randint(0, 1000, (1, 4)))
    n_t = sum(p.numel() for p in t.model.parameters())
    assert sum(p.numel() for p in s.model.parameters()) < n_t


def test_student_from_config_inherits_what_maps():
    t = tiny_model("llama", n_blocks=4)
    s = student_from_config(t, {"num_hidden_layers": 2})
    assert s.model.config.num_hidden_layers == 2
    # uniform map: student block 0 <- teacher block 1, student block 1 <- teacher block 3
    assert torch.equal(
        s.arch.blocks(s.model)[0].mlp.up_proj.weight, t.arch.blocks(t.model)[1].mlp.up_proj.weight
    )
    assert torch.equal(s.model.model.embed_tokens.weight, t.model.model.embed_tokens.weight)
    assert s.tokenizer is t.tokenizer
    narrow = student_from_config(t, {"hidden_size": 32, "num_hidden_layers": 2})
    assert narrow.extra["student"]["tensors_inherited"] < s.extra["student"]["tensors_inherited"]


def test_student_wider_than_teacher_refused():
    t = tiny_model("llama", n_blocks=2, hidden=64)
    with pytest.raises(ConfigError, match="wider than its teacher"):
        student_from_config(t, {"hidden_size": 128})
    with pytest.raises(ConfigError, match="no field"):
        student_from_config(t, {"num_layerz": 2})


def test_parse_student_spec():
    assert parse_student_spec("smollm2-135m:keep=20") == ("smollm2-135m", {"keep": 20})
    assert parse_student_spec("/a/b:c:drop-every=3") == ("/a/b:c", {"drop_every": 3})
    assert parse_student_spec("m:keep=4,importance=angular")[1] == {
        "keep": 4,
        "importance": "angular",
    }
    assert parse_student_spec("smollm2-135m") == ("smollm2-135m", {})
    with pytest.raises(ConfigError):
        parse_student_spec("m:depth=3")
    with pytest.raises(ConfigError):
        parse_student_spec("m:keep=x")
