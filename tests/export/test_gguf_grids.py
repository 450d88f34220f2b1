"""Bit-exact GGUF export of our integer grids: every tensor the file holds, dequantized by the
gguf package (ggml's own layouts), equals the weight our torch model multiplies by."""

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader, quants

from slimline.errors import ConfigError
from slimline.export import export_gguf, grid_blocks
from slimline.export.gguf_export import _permute_qk
from slimline.quant import Gptq, Rtn, quantize
from slimline.quant.grid import make_scheme, qparams, search_qparams
from slimline.quant.grid import quantize as grid_quantize
from slimline.quant.linear import quant_linears

GRIDS = {
    "gguf-q8_0": "Q8_0",
    "gguf-q5_0": "Q5_0",
    "gguf-q5_1": "Q5_1",
    "gguf-q4_0": "Q4_0",
    "gguf-q4_1": "Q4_1",
}
RANGES = {"gguf-q8_0": (1, 255), "gguf-q5_0": (0, 31), "gguf-q5_1": (0, 31)}
RANGES |= {"gguf-q4_0": (0, 15), "gguf-q4_1": (0, 15)}


def file_tensors(path):
    """{name: (type name, fp32 array in the tensor's numpy shape)} as the gguf package reads it."""
    out = {}
    for t in GGUFReader(path).tensors:
        out[t.name] = (t.tensor_type.name, quants.dequantize(t.data, t.tensor_type))
    return out


def expected_weights(model):
    """GGUF name -> the dequantized weight torch multiplies by, in llama.cpp's row order."""
    cfg = model.config
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    gg = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
    gg |= {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    out = {}
    for name, q in quant_linears(model).items():
        i, leaf = int(name.split(".")[2]), name.rsplit(".", 1)[1]
        w = q.dequantized_weight().numpy()
        out[f"blk.{i}.{gg[leaf]}.weight"] = _permute_qk(w, heads[leaf]) if leaf in heads else w
    return out


@pytest.mark.parametrize(
    ("method", "grid"),
    [("rtn", g) for g in GRIDS] + [("gptq", "gguf-q4_0"), ("gptq", "gguf-q5_1")],
)
def test_grid_quantized_model_exports_bit_exact(tmp_path, small_vocab_llama, grid, method):
    import copy

    lm = copy.deepcopy(small_vocab_llama)
    if method == "rtn":
        rec = quantize(lm.model, Rtn(grid=grid))
    else:
        calib = torch.randint(
            0, len(lm.tokenizer), (4, 64), generator=torch.Generator().manual_seed(0)
        )
        rec = quantize(lm.model, Gptq(grid=grid, min_calib_tokens=64), data=calib)
    assert rec["scheme"] == grid
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf", verify=False)
    got = file_tensors(res.path)
    want = expected_weights(lm.model)
    assert len(want) == 14
    for name, w in want.items():
        typ, held = got[name]
        assert typ == GRIDS[grid], name
        assert np.array_equal(held, w), f"{name} differs from our dequantized weight"
    assert sorted(want) == sorted(n for n in res.record["exact"] if n.startswith("blk."))
    assert res.record["requantized"] == {}
    assert got["token_embd.weight"][0] == "Q8_0"  # llama.cpp's choice for an unquantized embedding
    side = json.loads((tmp_path / "m.gguf.json").read_text())
    assert side["tensor_types"]["blk.0.attn_q.weight"] == GRIDS[grid].lower()


def test_grid_scales_are_fp16_and_codes_in_the_formats_range():
    torch.manual_seed(0)
    w = torch.randn(16, 64) * 0.05
    w[1] = 0.0  # all-zero groups: a zero fp16 scale, every code the zero level
    for grid, (lo, hi) in RANGES.items():
        sch = make_scheme(grid=grid)
        for fn in (qparams, search_qparams):
            s, z = fn(w, sch)
            assert torch.equal(s, s.half().float()), grid
            q = grid_quantize(w, s, z, sch)
            assert lo <= int(q.min()) and int(q.max()) <= hi


def test_grid_rtn_equals_ggml_reference_quality():
    """Our min-max RTN on the Q4_0 grid is ggml's quantize_row_q4_0_ref up to rounding ties:
    its error is the same to 1e-3 (measured: 0.004316 vs 0.004316 RMS)."""
    from gguf import GGMLQuantizationType as T

    torch.manual_seed(0)
    w = torch.randn(64, 128) * 0.05
    for grid in GRIDS:
        t = getattr(T, GRIDS[grid])
        sch = make_scheme(grid=grid)
        s, z = qparams(w, sch)
        ours = make_deq(w, s, z, sch)
        ref = torch.from_numpy(quants.dequantize(quants.quantize(w.numpy(), t), t))
        e_ours, e_ref = (ours - w).pow(2).mean().sqrt(), (ref - w).pow(2).mean().sqrt()
        assert abs(float(e_ours / e_ref) - 1) < 1e-3, grid


def make_deq(w, s, z, sch):
    from slimline.quant.grid import dequantize

    return dequantize(grid_quantize(w, s, z, sch), s, z, sch)


def test_grid_blocks_match_ggml_layout_for_ggml_codes():
    """grid_blocks writes ggml's own quantizer output byte for byte from (codes, d[, m])."""
    from gguf import GGMLQuantizationType as T

    torch.manual_seed(1)
    w = (torch.randn(8, 64) * 0.1).numpy()
    for name, size in (("q4_0", 18), ("q4_1", 20), ("q5_0", 22), ("q5_1", 24)):
        blocks = quants.quantize(w, getattr(T, name.upper())).reshape(8, 2, size)
        d = blocks[..., :2].copy().view(np.float16).astype(np.float32)
        m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32) if "_1" in name else None
        qs = blocks[..., -16:]
        codes = np.concatenate([qs & 0x0F, qs >> 4], -1)
        if name.startswith("q5"):
            at = 4 if m is not None else 2
            codes = codes | (
                np.unpackbits(blocks[..., at : at + 4], axis=-1, bitorder="little") << 4
            )
        got = grid_blocks(codes.reshape(8, 64), d.reshape(8, 2), m, name)
        assert np.array_equal(got, blocks.reshape(8, 2 * size)), name


def test_unmappable_grid_is_requantized_and_reported(tmp_path, small_vocab_llama):
    import copy

    lm = copy.deepcopy(small_vocab_llama)
    quantize(lm.model, Rtn(bits=4, group_size=64))  # group 64: no GGUF block type
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf", verify=False)
    req = res.record["requantized"]
    assert len(req) == 14
    e = req["blk.0.ffn_up.weight"]
    assert e["type"] == "q4_0" and e["source"] == "requantized from w4g64"
    assert not e["exact"] and 5 < e["sqnr_db"] < 40  # measured ~17 dB: a second 4-bit rounding


def test_same_structure_keeps_codes_with_fp16_scales(tmp_path, small_vocab_llama):
    import copy

    lm = copy.deepcopy(small_vocab_llama)
    quantize(lm.model, Rtn(bits=8, group_size=32))  # Q8_0's structure, fp32 scales
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf", verify=False)
    e = res.record["errors"]["blk.0.ffn_up.weight"]
    assert e["type"] == "q8_0" and e["source"] == "codes kept, scales to fp16"
    assert e["sqnr_db"] > 60  # only the fp16 scale rounding (measured ~70 dB), not a re-rounding


def test_grid_options_are_validated(tiny_bpe):
    with pytest.raises(ConfigError, match="unknown grid"):
        Rtn(grid="gguf-q3_z")
    with pytest.raises(ConfigError, match="also sets bits=8"):
        Rtn(grid="gguf-q4_0", bits=8).scheme()
    lm = tiny_bpe.small_vocab_model("llama")
    lm.model.model.layers[0].mlp.down_proj = torch.nn.Linear(48, 64, bias=False)  # 48 inputs
    before = lm.model.model.layers[0].mlp.down_proj.weight.clone()
    with pytest.raises(ConfigError, match="whole blocks of 32"):
        quantize(lm.model, Rtn(grid="gguf-q4_0"))
    assert torch.equal(lm.model.model.layers[0].mlp.down_proj.weight, before)
    assert not quant_linears(lm.model)  # nothing was changed


def test_gptq_on_the_grid_beats_rtn_on_the_grid():
    from slimline.quant.gptq import gptq_quantize, layer_error
    from slimline.quant.grid import dequantize, fake_quantize

    torch.manual_seed(0)
    x = torch.randn(512, 128) * torch.linspace(0.2, 3, 128)  # uneven input channels
    w = torch.randn(64, 128) * 0.05
    h = 2 * x.T @ x / x.shape[0]
    for grid in GRIDS:
        sch = make_scheme(grid=grid)
        codes, s, z = gptq_quantize(w, h, sch)
        assert torch.equal(s, s.half().float())
        e_gptq = layer_error(w, dequantize(codes, s, z, sch), h)
        e_rtn = layer_error(w, fake_quantize(w, sch), h)
        # measured 0.84 (q8_0), 0.78 (q4_0), 0.77 (q4_1): as on our own grids (0.83, 0.71, 0.78)
        assert e_gptq < 0.9 * e_rtn, grid


def test_awq_on_a_grid_is_exact_where_its_scales_fold_and_reported_where_not(
    tmp_path, small_vocab_llama
):
    import copy

    from slimline.quant import Awq

    lm = copy.deepcopy(small_vocab_llama)
    calib = torch.randint(0, len(lm.tokenizer), (8, 64), generator=torch.Generator().manual_seed(0))
    quantize(lm.model, Awq(grid="gguf-q4_1"), data=calib)
    unfolded = {n for n, q in quant_linears(lm.model).items() if q.input_scale is not None}
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf", verify=False)
    got, want = file_tensors(res.path), expected_weights(lm.model)
    req = res.record["requantized"]
    for name, w in want.items():
        layer = f"model.layers.{name.split('.')[1]}"
        if any(u.startswith(layer) and u.endswith(_LEAF[name.split(".")[2]]) for u in unfolded):
            assert name in req and req[name]["type"] == "q4_1"  # W/s is off the grid: reported
        else:
            assert np.array_equal(got[name][1], w) and name in res.record["exact"]
    assert len(req) == len(unfolded)


_LEAF = {
    "attn_q": "q_proj",
    "attn_k": "k_proj",
    "attn_v": "v_proj",
    "attn_output": "o_proj",
    "ffn_gate": "gate_proj",
    "ffn_up": "up_proj",
    "ffn_down": "down_proj",
}


@pytest.mark.parametrize(
    ("method", "grid"),
    [("rtn", "gguf-q6_k"), ("rtn", "gguf-q5_k"), ("rtn", "gguf-q4_k"), ("gptq", "gguf-q4_k")],
)
def test_k_quant_grids_export_bit_exact(tmp_path, tiny_bpe, method, grid):
    """K-quant super-blocks: group scales (and minimums) d * sc_j factor back into the fp16
    super-scale and the 6/8-bit sub-scales ggml stores."""
    lm = tiny_bpe.small_vocab_model("llama", hidden=256)
    if method == "rtn":
        quantize(lm.model, Rtn(grid=grid))
    else:
        calib = torch.randint(
            0, len(lm.tokenizer), (4, 32), generator=torch.Generator().manual_seed(0)
        )
        quantize(lm.model, Gptq(grid=grid, min_calib_tokens=64), data=calib)
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf", verify=False)
    got, want = file_tensors(res.path), expected_weights(lm.model)
    qtype = grid.removeprefix("gguf-")
    for name, w in want.items():
        assert got[name][0] == qtype.upper()
        assert np.array_equal(got[name][1], w), name
    assert res.record["requantized"] == {} and res.record["file_type"] == qtype


def test_q6_k_needs_whole_super_blocks_and_static_groups(small_vocab_llama):
    from slimline.quant.gptq import gptq_quantize

    with pytest.raises(ConfigError, match="whole blocks of 256"):
        quantize(copy_of(small_vocab_llama).model, Rtn(grid="gguf-q6_k"))  # 64 inputs
    w = torch.randn(8, 256)
    with pytest.raises(ConfigError, match="fixed up front"):
        gptq_quantize(
            w, torch.eye(256), make_scheme(grid="gguf-q6_k"), static_groups=False, actorder=False
        )


def copy_of(lm):
    import copy

    return copy.deepcopy(lm)
