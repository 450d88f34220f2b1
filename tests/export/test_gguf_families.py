"""GGUF export of qwen3, phi3 and gemma3_text, laid out as llama.cpp's convert_hf_to_gguf.py
writes them, each loaded in llama.cpp and verified against torch (KL / top-1 gate) on a tiny
random model: f32 files, and RTN on the Q8_0 grid written bit for bit."""

import copy

import numpy as np
import pytest
import torch
from gguf import GGUFReader, quants

from slimline.errors import UnsupportedArchitectureError
from slimline.export import export_gguf
from slimline.export.gguf_export import GGUF_ARCH, gguf_arch_for
from slimline.quant import Rtn, quantize
from slimline.quant.linear import quant_linears

FAMILIES = ("qwen3", "phi3", "gemma3_text")
# torch leaf name -> GGUF tensor (phi3: fused qkv -> attn_qkv, fused gate_up -> ffn_up)
LEAF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
LEAF |= {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
LEAF |= {"qkv_proj": "attn_qkv", "gate_up_proj": "ffn_up"}


@pytest.fixture(scope="module")
def models(tiny_bpe):
    """One tiny model per family with non-trivial norm weights, so that a norm written without
    Gemma's +1, or a q/k norm left out, changes the logits clearly. Gemma multiplies embeddings
    by sqrt(hidden) = 8 and normalises each branch's output: with unit embeddings the residual
    stream drowns attention (full vs sliding attention: KL 5e-9), so its embeddings are drawn at
    1/8 and its final norm raised (KL 1.7 between the two; logits of std ~4)."""
    out = {}
    for fam in FAMILIES:
        lm = tiny_bpe.small_vocab_model(fam)
        torch.manual_seed(1)
        with torch.no_grad():
            for n, p in lm.model.named_parameters():
                if "norm" in n:
                    p.add_(0.3 * torch.randn_like(p))
            if fam == "gemma3_text":
                lm.model.model.embed_tokens.weight.mul_(0.125)
                lm.model.model.norm.weight.add_(3.0)
        out[fam] = lm
    return out


def _fields(path):
    r = GGUFReader(path)
    return r, {t.name: t for t in r.tensors}


def _field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("family", FAMILIES)
def test_f32_export_is_verified_in_llamacpp(models, family, tmp_path):
    lm = models[family]
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf", qtype="f32")
    v = res.record["verify"]
    assert res.record["architecture"] == GGUF_ARCH[family]
    # measured KL 1.2e-6 (qwen3), 9.7e-7 (phi3), 6.0e-7 (gemma3), top-1 1.0: the f16 KV
    # cache's rounding; a wrong conversion (norms without +1, q/k rows permuted) gives KL >> 0.01
    assert v["verified"] and v["same_weights"]["kl"] < 1e-4
    assert v["same_weights"]["agree/top1"] == 1.0
    reader, tensors = _fields(res.path)
    assert _field(reader, "general.architecture") == GGUF_ARCH[family]
    arch = lm.arch
    blk = arch.blocks(lm.model)[0]
    if family == "gemma3_text":
        # (1 + w) RMSNorm: the file holds w + 1, every norm (q/k norms included)
        for gname, role in (
            ("attn_norm", "attn_norm"),
            ("post_attention_norm", "attn_post_norm"),
            ("ffn_norm", "mlp_norm"),
            ("post_ffw_norm", "mlp_post_norm"),
            ("attn_q_norm", "q_norm"),
            ("attn_k_norm", "k_norm"),
        ):
            w = blk.get_submodule(arch.roles[role]).weight.detach().numpy() + np.float32(1)
            assert np.array_equal(np.asarray(tensors[f"blk.0.{gname}.weight"].data), w), gname
        assert _field(reader, "gemma3.attention.sliding_window") == 8
        assert _field(reader, "gemma3.attention.sliding_window_pattern") == [True, False]
        assert _field(reader, "gemma3.final_logit_softcapping") == pytest.approx(30.0)
        assert _field(reader, "gemma3.attention.key_length") == 16
        assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    elif family == "qwen3":
        assert tensors["blk.1.attn_q_norm.weight"].data.shape == (16,)
        assert _field(reader, "qwen3.attention.key_length") == 16
    else:
        assert tuple(tensors["blk.0.attn_qkv.weight"].data.shape) == (128, 64)  # (H + 2K) * hd
        assert tuple(tensors["blk.0.ffn_up.weight"].data.shape) == (256, 64)  # gate; up
        assert "blk.0.ffn_gate.weight" not in tensors and "output.weight" in tensors
        assert _field(reader, "phi3.rope.dimension_count") == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_q8_0_grid_export_is_bit_exact_and_verified(models, family, tmp_path):
    lm = copy.deepcopy(models[family])
    quantize(lm.model, Rtn(grid="gguf-q8_0"))
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf")
    _, tensors = _fields(res.path)
    lins = quant_linears(lm.model)
    assert len(lins) == (8 if family == "phi3" else 14)
    for name, q in lins.items():
        i, leaf = int(name.split(".")[2]), name.rsplit(".", 1)[1]
        t = tensors[f"blk.{i}.{LEAF[leaf]}.weight"]
        assert t.tensor_type.name == "Q8_0", name
        held = quants.dequantize(t.data, t.tensor_type)
        assert np.array_equal(held, q.dequantized_weight().numpy()), name  # no second rounding
    assert res.record["requantized"] == {}
    v = res.record["verify"]
    # measured KL 3.5e-3 / top-1 0.992 (qwen3), 1.2e-3 / 0.977 (phi3), 8.1e-4 / 0.992 (gemma3):
    # llama.cpp rounds activations to 8 bits per block of 32 in its quantized dot products
    assert v["same_weights"]["kl"] < 0.01 and v["same_weights"]["agree/top1"] >= 0.9


def test_a_gemma3_file_without_the_norm_offset_fails_verification(models, tmp_path, monkeypatch):
    """The gate has teeth: norms written as HF stores them (w, not 1 + w) are caught."""
    import dataclasses

    from slimline.errors import IntegrityError
    from slimline.export import gguf_export

    real = gguf_export.get_arch
    monkeypatch.setattr(
        gguf_export, "get_arch", lambda m: dataclasses.replace(real(m), norm_offset=0.0)
    )
    lm = models["gemma3_text"]
    with pytest.raises(IntegrityError, match="differ from torch"):
        export_gguf(lm.model, lm.tokenizer, tmp_path / "bad.gguf", qtype="f32")
    assert not list(tmp_path.iterdir())


def test_a_gemma3_file_with_the_wrong_sliding_layers_fails_verification(
    models, tmp_path, monkeypatch
):
    """llama.cpp reads which layers slide from the file (its default: 5 sliding, 1 global)."""
    import gguf

    from slimline.errors import IntegrityError

    orig = gguf.GGUFWriter.add_sliding_window_pattern
    monkeypatch.setattr(
        gguf.GGUFWriter, "add_sliding_window_pattern", lambda w, v: orig(w, [True] * len(v))
    )
    lm = models["gemma3_text"]
    with pytest.raises(IntegrityError, match="differ from torch"):  # measured KL 0.64
        export_gguf(lm.model, lm.tokenizer, tmp_path / "bad.gguf", qtype="f32")


def test_unsupported_settings_are_refused_before_writing(models, tmp_path):
    lm = copy.deepcopy(models["phi3"])
    lm.model.config.rope_parameters = {**lm.model.config.rope_parameters, "rope_type": "longrope"}
    with pytest.raises(UnsupportedArchitectureError, match="rope scaling 'longrope'"):
        export_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf", verify=False)
    g = copy.deepcopy(models["gemma3_text"])
    g.model.config.query_pre_attn_scalar = 256
    with pytest.raises(UnsupportedArchitectureError, match="query_pre_attn_scalar"):
        export_gguf(g.model, g.tokenizer, tmp_path / "m.gguf", verify=False)
    assert not list(tmp_path.iterdir())
    assert gguf_arch_for(models["qwen3"].arch) == "qwen3"
