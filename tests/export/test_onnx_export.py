"""ONNX export: quantized layers become MatMulNBits holding exactly our codes, scales and zero
points (decoded back here independently of the exporter's packing); every supported family runs
in ONNX Runtime as in torch; bad input fails with one line and leaves no file."""

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from slimline.cli import app
from slimline.errors import ConfigError, IntegrityError
from slimline.export.onnx_export import export_onnx
from slimline.models import tiny_model
from slimline.quant import Rtn, quantize
from slimline.quant.linear import QuantLinear


@pytest.fixture(scope="module")
def tiny192():
    # widths 192 (attention: ragged against a group of 128) and 256 (down_proj)
    return tiny_model("llama", hidden=192, intermediate=256, n_heads=4, n_kv_heads=2)


def _decode(node: onnx.NodeProto, inits: dict[str, np.ndarray]):
    """MatMulNBits' inputs back to codes [N, K], scales [N, blocks], zeros [N, blocks] or None,
    read from the spec's layout (low nibble first), not from the exporter's code."""
    at = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, block = at["K"], at["N"], at["bits"], at["block_size"]
    blocks = -(-k // block)
    b = inits[node.input[1]]
    assert b.dtype == np.uint8 and b.shape == (n, blocks, block * bits // 8)
    if bits == 4:
        codes = np.stack([b & 0x0F, b >> 4], -1).reshape(n, blocks * block)
    else:
        codes = b.reshape(n, blocks * block)
    assert not codes[:, k:].any()  # padding of a ragged group: zero codes the kernel ignores
    scales = inits[node.input[2]].reshape(n, blocks)
    zeros = None
    if len(node.input) > 3 and node.input[3]:
        z = inits[node.input[3]]
        if bits == 4:
            z = np.stack([z & 0x0F, z >> 4], -1).reshape(n, -1)
        zeros = z[:, :blocks]
    return at, codes[:, :k], scales, zeros


def _nbits_nodes(path):
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    assert all(n.domain == "com.microsoft" for n in nodes)
    return nodes, inits


@pytest.mark.parametrize(
    "group,symmetric",
    [(32, False), (64, False), (128, False), (32, True), (128, True)],
)
def test_4bit_layers_are_matmulnbits_with_exactly_our_codes_scales_and_zeros(
    tiny192, tmp_path, group, symmetric
):
    lm = copy.deepcopy(tiny192)
    quantize(lm.model, Rtn(bits=4, group_size=group, symmetric=symmetric))
    res = export_onnx(lm.model, lm.tokenizer, tmp_path / "m.onnx")
    nodes, inits = _nbits_nodes(tmp_path / "m.onnx")
    layers = {n: m for n, m in lm.model.named_modules() if isinstance(m, QuantLinear)}
    assert len(nodes) == len(layers) == 14 and res.record["op_counts"] == {"MatMulNBits": 14}
    for node in nodes:
        name = node.input[1].removesuffix(".qweight")
        q = layers.pop(name)
        at, codes, scales, zeros = _decode(node, inits)
        assert (at["bits"], at["block_size"], at["K"], at["N"]) == (
            4,
            group,
            q.in_features,
            q.out_features,
        )
        assert np.array_equal(codes, q.codes().numpy())
        assert np.array_equal(scales, q.scale.numpy())  # bit for bit, no rounding
        if symmetric:
            assert zeros is None  # ORT's default zero 8 is ours
        else:
            assert np.array_equal(zeros, q.zero.numpy())
    assert not layers
    # the graph runs what torch runs: measured KL ~3e-15, max |logit diff| ~7e-7
    v = res.record["verify"]
    assert v["same_weights"]["kl"] < 1e-9 and v["same_weights"]["agree/top1"] == 1.0


@pytest.mark.parametrize("group", [None, 32])
def test_8bit_layers_are_matmulnbits_8bit_exactly(tiny192, tmp_path, group):
    lm = copy.deepcopy(tiny192)
    quantize(lm.model, Rtn(bits=8, group_size=group, symmetric=group is None))
    res = export_onnx(lm.model, lm.tokenizer, tmp_path / "m.onnx")
    nodes, inits = _nbits_nodes(tmp_path / "m.onnx")
    layers = dict(lm.model.named_modules())
    for node in nodes:
        q = layers[node.input[1].removesuffix(".qweight")]
        at, codes, scales, zeros = _decode(node, inits)
        # per-channel: one block of the next power of two >= K (192 -> 256)
        assert at["bits"] == 8 and at["block_size"] == (
            group or 1 << (q.in_features - 1).bit_length()
        )
        assert np.array_equal(codes, q.codes().numpy())
        assert np.array_equal(scales, q.scale.numpy())
        assert (zeros is None) if group is None else np.array_equal(zeros, q.zero.numpy())
    assert len(nodes) == 14
    assert res.record["verify"]["same_weights"]["max_abs_logit_diff"] < 1e-4  # measured 6e-7


def test_other_grids_export_as_their_fp32_weight_and_say_so(tiny192, tmp_path):
    lm = copy.deepcopy(tiny192)
    quantize(lm.model, Rtn(bits=3, group_size=32))
    res = export_onnx(lm.model, lm.tokenizer, tmp_path / "m.onnx")
    layer = res.record["layers"]["model.layers.0.self_attn.q_proj"]
    assert layer == {
        "op": "MatMul",
        "source": "quantized (dequantized fp32)",
        "type": "QuantLinear",
    }
    assert res.record["verify"]["same_weights"]["kl"] < 1e-9


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gpt2", "opt"])
def test_each_decoder_family_runs_in_onnxruntime_as_in_torch(family, tmp_path):
    lm = tiny_model(family)
    res = export_onnx(lm.model, lm.tokenizer, tmp_path / f"{family}.onnx")
    rec = json.loads((tmp_path / f"{family}.onnx.json").read_text())
    assert rec["family"] == family and rec["kind"] == "causal-lm"
    assert rec["inputs"][:3] == ["input_ids", "past_key_values.0.key", "past_key_values.0.value"]
    assert rec["outputs"][:3] == ["logits", "present.0.key", "present.0.value"]
    v = res.record["verify"]
    assert v["engine"]["engine"] == "onnxruntime" and v["data"] == "python-docs"
    # measured max |logit diff| 3e-7 .. 4e-7, KL < 1e-15 (rotary left out: KL 0.31, top-1 0.08)
    assert v["same_weights"]["max_abs_logit_diff"] < 1e-4 and v["same_weights"]["kl"] < 1e-9
    assert rec["verify"]["same_weights"]["kl"] == v["same_weights"]["kl"]


def test_minilm_exports_fp32_and_int8_and_embeds_as_torch(minilm, tmp_path):
    from slimline.engines.onnxruntime_engine import OnnxEncoder
    from slimline.export.onnx_export import encoder_batch
    from slimline.models import embed

    f32 = export_onnx(minilm.model, minilm.tokenizer, tmp_path / "f32.onnx")
    assert f32.record["kind"] == "encoder" and f32.record["op_counts"] == {"MatMul": 36}
    assert f32.record["verify"]["cosine_min"] > 0.99999  # measured 1.0, max |diff| ~1e-6
    q = copy.deepcopy(minilm)
    quantize(q.model, Rtn(bits=8, group_size=None))
    i8 = export_onnx(q.model, q.tokenizer, tmp_path / "i8.onnx")
    assert i8.record["op_counts"] == {"MatMulNBits": 36}
    assert i8.record["verify"]["cosine_min"] > 0.99999  # against torch holding the int8 codes
    ids, mask = encoder_batch(minilm.tokenizer, 0)
    with OnnxEncoder(tmp_path / "i8.onnx", threads=1) as enc:
        got = enc.encode(ids, mask)
    cos = torch.nn.functional.cosine_similarity(got, embed(minilm, ids, mask), dim=-1)
    assert cos.min() > 0.999  # int8 per-channel vs fp32 MiniLM: measured 0.9994 .. 0.9997
    # measured 62.1 MB vs 90.3 MB: the 47 MB word embedding stays fp32
    assert i8.record["bytes"] < 0.75 * f32.record["bytes"]


def test_an_unsupported_family_is_one_line_naming_it_and_writes_nothing(tmp_path):
    lm = tiny_model("qwen3")
    with pytest.raises(ConfigError) as e:
        export_onnx(lm.model, lm.tokenizer, tmp_path / "q3.onnx")
    assert str(e.value.problem) == (
        "ONNX export supports llama, mistral, qwen2, gpt2, opt, bert models, not qwen3"
    )
    assert "\n" not in str(e.value) and e.value.fix
    assert not list(tmp_path.iterdir())


def test_a_wrong_conversion_fails_verification_and_writes_nothing(tmp_path, monkeypatch):
    from slimline.export import onnx_export

    lm = tiny_model("llama")
    with torch.no_grad():  # HF's 0.02 init barely moves logits: spread them so rotary matters
        for p in lm.model.parameters():
            if p.ndim == 2:
                p.normal_(0, 1.0 / p.shape[1] ** 0.5)
    monkeypatch.setattr(onnx_export, "_rotate", lambda g, x, cos, sin, hd: x)  # no rotary
    with pytest.raises(IntegrityError, match=r"ONNX Runtime's logits for bad\.onnx differ"):
        export_onnx(lm.model, lm.tokenizer, tmp_path / "bad.onnx")
    assert not list(tmp_path.iterdir())  # no file, no record, no temp dir


def test_cli_exports_onnx_and_refuses_gguf_options(tiny_llama_dir, tmp_path):
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(
        app, ["export", str(tiny_llama_dir), "--format", "onnx", "-o", str(out), "--json"]
    )
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["family"] == "llama" and rec["verify"]["verified"] and out.is_file()
    assert json.loads((tmp_path / "m.onnx.json").read_text())["bytes"] == out.stat().st_size
    r = CliRunner().invoke(app, ["export", str(tiny_llama_dir), "--format", "onnx", "-o", str(out)])
    assert r.exit_code != 0 and "already exists" in str(r.exception)
    r = CliRunner().invoke(
        app,
        [
            "export",
            str(tiny_llama_dir),
            "--format",
            "onnx",
            "--qtype",
            "q8_0",
            "-o",
            str(tmp_path / "x.onnx"),
        ],
    )
    assert isinstance(r.exception, ConfigError) and not (tmp_path / "x.onnx").exists()
