"""Save -> load gives back the same model: plain tensors, tied weights, codec modules, tokenizer."""

from __future__ import annotations

import json
import stat

import pytest
import torch
from artifact_helpers import Int8RowLinear, tiny_llama

from slimline.artifact import (
    MANIFEST,
    is_artifact,
    load_artifact,
    manifest_digest,
    read_manifest,
    save_artifact,
    verify_artifact,
)
from slimline.errors import ConfigError, InputError


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_round_trip_with_codec_module_gives_identical_outputs(saved):
    info, model = saved
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    loaded, tok, manifest = load_artifact(info.path)
    assert isinstance(loaded.model.layers[0].mlp.down_proj, Int8RowLinear)
    assert loaded.model.layers[0].mlp.down_proj.qweight.dtype == torch.int8
    # Exactly equal: the same tensors, rebuilt, not re-quantized.
    assert torch.equal(_logits(model, ids), _logits(loaded, ids))
    # Tied embedding stays tied (one Parameter) and is stored once.
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert manifest["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert manifest["modules"]["model.layers.0.mlp.down_proj"]["codec"] == "tests.int8_row_linear"
    assert manifest["metrics"] == {"ppl/python-docs": 12.5}
    assert tok is not None and tok("hello world")["input_ids"]
    assert not any(t.device.type == "meta" for t in loaded.parameters())


def test_manifest_records_provenance_and_digest_is_canonical_manifest_hash(saved):
    info, _ = saved
    m = read_manifest(info.path)
    assert info.digest == manifest_digest(m)
    assert m["kind"] == "causal-lm" and m["parent"] is None
    env = m["environment"]
    assert {"python", "torch", "transformers", "slimline", "machine", "seed"} <= env.keys()
    assert set(m["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert json.loads((info.path / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"
    ]
    assert is_artifact(info.path) and not is_artifact(info.path / "config.json")
    rep = verify_artifact(info.path)
    assert rep.ok and rep.signed and rep.key_id == info.key_id
    assert rep.files_checked == len(m["files"])
    # Re-indenting the manifest does not change what was signed.
    (info.path / MANIFEST).write_text(json.dumps(m, indent=7, sort_keys=False))
    assert verify_artifact(info.path).ok


def test_parent_digest_recorded_from_path(saved, tmp_path):
    info, model = saved
    child = save_artifact(model, None, tmp_path / "child", parent=info.path)
    assert read_manifest(child.path)["parent"] == info.digest
    with pytest.raises(ConfigError):
        save_artifact(model, None, tmp_path / "x", parent="not-a-digest")


def test_untied_and_reshaped_linear_round_trip(tmp_path):
    # A structurally pruned MLP channel set the config cannot express (one block only).
    model = tiny_llama(seed=1, tie=False)
    mlp = model.model.layers[1].mlp
    keep = torch.arange(0, 128, 2)
    for name in ("gate_proj", "up_proj"):
        lin = getattr(mlp, name)
        new = torch.nn.Linear(64, len(keep), bias=False)
        new.weight.data = lin.weight.data[keep].clone()
        setattr(mlp, name, new)
    down = torch.nn.Linear(len(keep), 64, bias=False)
    down.weight.data = mlp.down_proj.weight.data[:, keep].clone()
    mlp.down_proj = down
    info = save_artifact(model, None, tmp_path / "pruned")
    assert "model.layers.1.mlp.down_proj.weight" in info.manifest["reshaped"]
    loaded, tok, _ = load_artifact(info.path)
    assert tok is None
    assert loaded.model.layers[1].mlp.down_proj.in_features == 64
    ids = torch.arange(10)[None]
    assert torch.equal(_logits(model, ids), _logits(loaded, ids))
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight


def test_encoder_round_trip(tmp_path, minilm_tokenizer):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(minilm_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    model = BertModel(cfg).eval()
    info = save_artifact(model, minilm_tokenizer, tmp_path / "bert")
    assert info.manifest["kind"] == "encoder"
    loaded, tok, _ = load_artifact(info.path)
    batch = tok(["a small test"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, loaded(**batch).last_hidden_state)


def test_save_is_atomic_when_interrupted(tmp_path, llama, monkeypatch):
    import slimline.artifact.io as io

    def boom(*a, **k):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(io, "write_safetensors", boom)  # the weights writer save_artifact uses
    with pytest.raises(RuntimeError, match="simulated"):
        save_artifact(llama, None, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no target, no temp dir


def test_refuses_existing_target_and_overwrite_replaces(tmp_path, llama):
    first = save_artifact(llama, None, tmp_path / "a", manifest={"metrics": {"size/bytes": 1}})
    with pytest.raises(InputError, match="already exists"):
        save_artifact(llama, None, tmp_path / "a")
    second = save_artifact(
        llama, None, tmp_path / "a", manifest={"metrics": {"size/bytes": 2}}, overwrite=True
    )
    assert second.digest != first.digest and verify_artifact(second.path).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_reserved_manifest_fields_are_refused(tmp_path, llama):
    with pytest.raises(ConfigError, match="files"):
        save_artifact(llama, None, tmp_path / "a", manifest={"files": {}})


def test_non_finite_metric_is_recorded_as_text(tmp_path, llama):
    info = save_artifact(
        llama, None, tmp_path / "a", manifest={"metrics": {"ppl/python-docs": float("inf")}}
    )
    assert read_manifest(info.path)["metrics"]["ppl/python-docs"] == "inf"
    assert verify_artifact(info.path).ok


def test_private_key_created_with_mode_0600(tmp_path, llama, slimline_home):
    save_artifact(llama, None, tmp_path / "a")
    key = slimline_home / "keys" / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (slimline_home / "keys" / "signing.pub").exists()
