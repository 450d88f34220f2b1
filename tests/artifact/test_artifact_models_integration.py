"""Artifacts through slimline.models: load_model(artifact dir) verifies and rebuilds it (the
lead's loader calls load_artifact), with the tokenizer class that saved it."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM

from slimline.artifact import read_manifest, save_artifact
from slimline.models import bundled_path, load_model
from tiny_hf import tiny_causal_lm


def test_qwen2_config_with_smollm2_tokenizer_round_trips_through_load_model(tmp_path):
    # A Qwen2 config beside SmolLM2's tokenizer: AutoTokenizer alone would pick Qwen2Tokenizer
    # from config.json and split "\n    " into 2 tokens (198, 333) instead of 1 (472).
    tok = AutoTokenizer.from_pretrained(str(bundled_path("smollm2-135m")), local_files_only=True)
    model = tiny_causal_lm(Qwen2ForCausalLM, seed=3, vocab_size=2048, tie_word_embeddings=False)
    info = save_artifact(model, tok, tmp_path / "q", manifest={"recipe": {"model": "tiny-qwen2"}})
    m = read_manifest(info.path)
    assert (
        m["kind"] == "causal-lm" and m["tied"] == {} and m["tokenizer_class"] == type(tok).__name__
    )
    back = load_model(str(info.path))
    assert back.kind == "causal-lm" and back.arch.family == "llama"
    assert back.manifest["recipe"] == {"model": "tiny-qwen2"}
    text = "def f(x):\n    return x + 1"
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert 472 in ids[0].tolist()
    assert back.tokenizer(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, back.model(input_ids=ids).logits)
