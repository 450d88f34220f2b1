"""Issue 16, item 15: `slimline profile` of a GPT-2 / OPT whose window is 128 positions measures
at the longest lengths the model allows and says so, instead of failing."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_profile_fits_a_128_position_model(cli, tmp_path, family):
    import transformers as tf

    from slimline.models import tiny_config, tiny_model

    tok = tiny_model(family).tokenizer
    cfg = tiny_config(family, vocab_size=len(tok))
    if family == "gpt2":
        cfg.n_positions = 128
        model = tf.GPT2LMHeadModel(cfg)
    else:
        cfg.max_position_embeddings = 128
        model = tf.OPTForCausalLM(cfg)
    d = tmp_path / family
    model.save_pretrained(d)
    tok.save_pretrained(d)
    res = cli("profile", d, "--repeats", "1", "--threads", "1", "--no-breakdown", "--json")
    assert res.code == 0, res.err
    s = json.loads(res.out)["settings"]
    assert (s["seq_len"], s["prompt_len"], s["new_tokens"]) == (128, 32, 64)  # 32 + 64 fit
    assert s["fitted_to_model"] == {"seq_len": {"asked": 512, "used": 128}, "max_positions": 128}
    said = [x for x in res.err.splitlines() if x.startswith("warning: ")]  # what the user reads
    assert any(
        "takes at most 128 positions: measuring with seq_len 128 (asked 512)" in w for w in said
    )
