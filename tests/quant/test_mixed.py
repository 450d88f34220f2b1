"""Mixed precision: sensitivity, exact knapsack allocation under a budget, table and heat map."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from slimline.core import Context, apply_technique, make_config
from slimline.errors import ConfigError, TargetError
from slimline.quant.mixed import (
    MixedPrecision,
    Sensitivity,
    allocate_bits,
    allocation_table,
    budget_from_avg_bits,
    layer_bits_cost,
    layer_sensitivity,
    plot_allocation,
    uniform_allocation,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def calib(smollm2_2blocks):
    from slimline.data import calibration_blocks

    return calibration_blocks(smollm2_2blocks.tokenizer, n=4, seq_len=128, seed=0)


@pytest.fixture(scope="module")
def sens(smollm2_2blocks, calib):
    return layer_sensitivity(smollm2_2blocks.model, calib, (8, 4, 3, 2), group_size=64)


def test_sensitivity_is_per_layer_and_falls_with_bits(sens):
    assert len(sens.errors) == 14  # 7 linears x 2 real SmolLM2 blocks
    for name, e in sens.errors.items():
        assert e[2] > e[3] > e[4] > e[8] > 0, (name, e)
    # layers differ by orders of magnitude at 4 bits — what makes mixed precision worth it.
    # measured: block0 v_proj 6.5e-3 ... block0 down_proj 8.2
    at4 = sorted(e[4] for e in sens.errors.values())
    assert at4[-1] / at4[0] > 100, at4


def test_allocation_meets_budget_and_beats_uniform(sens):
    # 3.8 bits/weight: uniform 3-bit fits (3.625 with group-64 scales and zeros), 4-bit does not
    budget = budget_from_avg_bits(sens, 3.8)
    alloc = allocate_bits(sens, budget)
    uni = uniform_allocation(sens, budget)
    assert alloc.exact and alloc.size_bits <= budget
    assert set(uni.bits.values()) == {3}
    # measured summed output error: uniform 3-bit 154.1, mixed 84.3 at 3.8 bits/weight
    assert alloc.total_error < 0.8 * uni.total_error, (alloc.total_error, uni.total_error)
    assert alloc.size_bits == sum(
        layer_bits_cost(sens.shapes[n], b, 64, False) for n, b in alloc.bits.items()
    )
    # at 5.0 bits/weight uniform is 4-bit; mixed spends the room on the sensitive layers
    a5 = allocate_bits(sens, budget_from_avg_bits(sens, 5.0))
    u5 = uniform_allocation(sens, budget_from_avg_bits(sens, 5.0))
    assert set(u5.bits.values()) == {4}
    assert a5.total_error < 0.8 * u5.total_error  # measured 22.0 vs 34.0


def test_dp_is_exact_against_brute_force():
    g = torch.Generator().manual_seed(3)
    shapes = {f"model.layers.{i}.mlp.down_proj": (32 * (1 + i % 3), 64) for i in range(6)}
    errors = {
        n: {b: float(torch.rand(1, generator=g)) * 2.0 ** (8 - b) * (1 + i) for b in (8, 4, 3, 2)}
        for i, n in enumerate(shapes)
    }
    sens = Sensitivity(errors, shapes, "output", 64, False, (8, 4, 3, 2))
    names = list(shapes)
    for avg in (2.7, 3.1, 4.2, 6.0):
        budget = budget_from_avg_bits(sens, avg)
        best = min(
            (
                sum(errors[n][b] for n, b in zip(names, combo, strict=True)),
                combo,
            )
            for combo in itertools.product((8, 4, 3, 2), repeat=len(names))
            if sum(layer_bits_cost(shapes[n], b, 64) for n, b in zip(names, combo, strict=True))
            <= budget
        )
        alloc = allocate_bits(sens, budget)
        assert alloc.total_error == pytest.approx(best[0], rel=1e-12), avg
        assert alloc.size_bits <= budget


def test_budget_below_minimum_names_the_minimum(sens):
    smallest = sum(layer_bits_cost(s, 2, 64, False) for s in sens.shapes.values())
    with pytest.raises(TargetError, match=f"smallest possible {smallest / 8:,.0f} bytes"):
        allocate_bits(sens, smallest - 8)
    assert allocate_bits(sens, smallest).size_bits == smallest  # exactly the minimum is fine
    with pytest.raises(ConfigError, match="bits_options"):
        make_config("quant.mixed", {"bits_options": [5]})


def test_table_and_heatmap_png(sens, tmp_path):
    from rich.console import Console

    alloc = allocate_bits(sens, budget_from_avg_bits(sens, 4.0))
    console = Console(record=True, width=120)
    console.print(allocation_table(alloc, sens))
    text = console.export_text()
    assert "model.layers.1.mlp.down_proj" in text and "bits/weight" in text
    png = plot_allocation(alloc, tmp_path / "plots" / "bits.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert not list((tmp_path / "plots").glob("*.tmp*"))


def test_technique_applies_grid_weights_and_kl_metric(smollm2_2blocks, calib, tmp_path):
    model = copy.deepcopy(smollm2_2blocks.model)
    cfg = MixedPrecision(avg_bits=4.0, plot="mp.png")
    rec = apply_technique(model, cfg, Context(calib=calib, workdir=tmp_path))
    assert rec["size_bytes"] <= rec["budget_bytes"] and (tmp_path / "mp.png").exists()
    assert rec["total_error"] < rec["uniform_error"]
    from slimline.quant.linear import QuantLinear

    # packed: the bytes QuantLinear really holds (bias excluded) are the allocation's size
    stored = 0
    for name, b in rec["bits"].items():
        q = model.get_submodule(name)
        assert isinstance(q, QuantLinear) and q.scheme.bits == b, name
        stored += q.nbytes() - (q.bias.numel() * 4 if q.bias is not None else 0)
    assert stored == rec["size_bytes"]
    # unpacked: every weight lies on the grid of its width, at most 2^bits values per group
    model = copy.deepcopy(smollm2_2blocks.model)
    rec = apply_technique(model, MixedPrecision(avg_bits=4.0, pack=False), Context(calib=calib))
    for name, b in rec["bits"].items():
        w = model.get_submodule(name).weight.detach()
        group = w[:, :64].sort(1).values
        distinct = 1 + (group.diff(dim=1) != 0).sum(1)
        assert int(distinct.max()) <= 2**b, name
        assert not torch.equal(w, smollm2_2blocks.model.get_submodule(name).weight), name
    # the end-to-end KL metric (one forward per layer and width), on real weights: a tiny random
    # model's near-uniform outputs give KLs of ~1e-7 at every width, i.e. float round-off
    ids = calib[:2, :32]
    kl = layer_sensitivity(smollm2_2blocks.model, ids, (8, 2), group_size=32, metric="kl")
    assert len(kl.errors) == 14  # 7 linears in each of the 2 blocks; lm_head ignored
    for name, e in kl.errors.items():
        assert e[2] > 10 * e[8] >= 0, (name, e)


# --- GGUF grids as the options (a Q4_K_M-style mix that exports bit-exact) ---------------------

GRID_MIX = ["gguf-q8_0", "gguf-q4_k", "gguf-q4_0"]


@pytest.fixture(scope="module")
def lm256(tiny_bpe):
    return tiny_bpe.small_vocab_model(hidden=256)  # every linear 256 wide: K-quants fit


@pytest.fixture(scope="module")
def calib256(lm256):
    from slimline.data import calibration_blocks

    return calibration_blocks(lm256.tokenizer, n=4, seq_len=64, seed=0)


@pytest.fixture(scope="module")
def gsens(lm256, calib256):
    return layer_sensitivity(lm256.model, calib256, grids=GRID_MIX)


def test_grid_costs_are_ggml_block_sizes():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from slimline.quant.grid import GRIDS
    from slimline.quant.mixed import GGUF_BLOCK_BYTES, grid_bits_cost

    assert set(GGUF_BLOCK_BYTES) == set(GRIDS)
    for g, sizes in GGUF_BLOCK_BYTES.items():
        assert sizes == GGML_QUANT_SIZES[GGMLQuantizationType[g.removeprefix("gguf-").upper()]]
    bpw = {g: grid_bits_cost((1, 256), g) / 256 for g in GRIDS}
    assert bpw == {
        "gguf-q8_0": 8.5,
        "gguf-q6_k": 6.5625,
        "gguf-q5_k": 5.5,
        "gguf-q5_0": 5.5,
        "gguf-q5_1": 6.0,
        "gguf-q4_k": 4.5,
        "gguf-q4_0": 4.5,
        "gguf-q4_1": 5.0,
    }


def test_grid_allocation_mixes_grids_within_budget_and_beats_uniform(gsens):
    from slimline.quant.mixed import grid_bits_cost

    assert gsens.options == ("gguf-q8_0", "gguf-q4_k", "gguf-q4_0")  # widest first
    assert len(gsens.errors) == 14
    for name, e in gsens.errors.items():
        assert set(e) == set(GRID_MIX) and e["gguf-q4_0"] > e["gguf-q8_0"] > 0, (name, e)
    budget = budget_from_avg_bits(gsens, 6.0)  # between Q4_K/Q4_0 (4.5) and Q8_0 (8.5)
    alloc = allocate_bits(gsens, budget)
    uni = uniform_allocation(gsens, budget)
    assert alloc.exact and alloc.size_bits <= budget
    assert alloc.size_bits == sum(
        grid_bits_cost(gsens.shapes[n], g) for n, g in alloc.grids.items()
    )
    assert set(alloc.grids) == set(alloc.bits) and len(set(alloc.grids.values())) > 1
    assert {alloc.bits[n] for n, g in alloc.grids.items() if g == "gguf-q8_0"} == {8}
    # uniform: the best equally wide 4-bit grid for every layer (8.5 bits/weight does not fit)
    assert len(set(uni.grids.values())) == 1 and uni.bits[next(iter(uni.bits))] == 4
    # measured summed output error: uniform Q4_K 48.7, mixed 25.2 at 6.0 bits/weight
    assert alloc.total_error < 0.8 * uni.total_error, (alloc.total_error, uni.total_error)
    # the wide grid goes to the layers whose 4-bit error per stored bit it saves most
    gain = {
        n: (e["gguf-q4_k"] - e["gguf-q8_0"]) / gsens.cost(n, "gguf-q8_0")
        for n, e in gsens.errors.items()
    }
    wide = [gain[n] for n, g in alloc.grids.items() if g == "gguf-q8_0"]
    narrow = [gain[n] for n, g in alloc.grids.items() if g != "gguf-q8_0"]
    assert sum(wide) / len(wide) > sum(narrow) / len(narrow), (wide, narrow)


def test_grid_mix_quantizes_as_rtn_and_exports_bit_exact(lm256, calib256, tmp_path):
    from rich.console import Console

    from slimline.export import export_gguf
    from slimline.quant import Rtn, quantize
    from slimline.quant.linear import QuantLinear

    lm = copy.deepcopy(lm256)
    cfg = MixedPrecision(grids=GRID_MIX, avg_bits=6.0, plot="grids.png")
    assert cfg.size_effect().bits == 4
    assert make_config("quant.mixed", cfg.model_dump(mode="json")) == cfg  # round-trips
    rec = apply_technique(lm.model, cfg, Context(calib=calib256, workdir=tmp_path)).details
    assert rec["size_bytes"] <= rec["budget_bytes"] and len(set(rec["grids"].values())) > 1
    assert rec["total_error"] < rec["uniform_error"]
    assert (tmp_path / "grids.png").read_bytes()[:4] == b"\x89PNG"
    # each layer is exactly what quant.rtn with that grid makes of it
    for g in set(rec["grids"].values()):
        ref = copy.deepcopy(lm256.model)
        quantize(ref, Rtn(grid=g))
        for name, lg in rec["grids"].items():
            if lg == g:
                q = lm.model.get_submodule(name)
                assert isinstance(q, QuantLinear) and q.scheme.grid == g, name
                want = ref.get_submodule(name).dequantized_weight()
                assert torch.equal(q.dequantized_weight(), want), name
    # llama.cpp loads it (verify) and every mixed layer is written from our codes, unrounded
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "mix.gguf", verify=True)
    blk = [n for n in res.record["exact"] if n.startswith("blk.")]
    assert len(blk) == 14 and res.record["requantized"] == {}
    types = {res.record["tensor_types"][n] for n in blk}
    assert types == {g.removeprefix("gguf-") for g in rec["grids"].values()}, types
    # the allocation's size is what the file stores for these tensors
    from gguf import GGUFReader

    held = sum(int(t.n_bytes) for t in GGUFReader(res.path).tensors if t.name in blk)
    assert held == rec["size_bytes"]
    console = Console(record=True, width=140)
    alloc = allocate_bits(
        layer_sensitivity(lm256.model, calib256, grids=GRID_MIX), int(rec["budget_bytes"] * 8)
    )
    console.print(allocation_table(alloc))
    assert "gguf-q8_0" in console.export_text()


def test_grid_that_cannot_take_a_width_is_not_chosen(tiny_bpe, calib256):
    from transformers import AutoModelForCausalLM

    from slimline.models import tiny_config

    tok = tiny_bpe.bpe_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_config("llama", vocab_size=len(tok), hidden=256, intermediate=288)
    ).eval()  # down_proj takes 288 inputs: 9 blocks of 32, not a whole Q4_K super-block
    sens = layer_sensitivity(model, calib256, grids=["gguf-q4_k", "gguf-q4_0"])
    downs = [n for n in sens.errors if n.endswith("down_proj")]
    assert len(downs) == 2
    for n, e in sens.errors.items():
        assert set(e) == ({"gguf-q4_0"} if n in downs else {"gguf-q4_k", "gguf-q4_0"}), n
    alloc = allocate_bits(sens, budget_from_avg_bits(sens, 4.5))
    assert all(alloc.grids[n] == "gguf-q4_0" for n in downs)
    assert "gguf-q4_k" in set(alloc.grids.values())  # the others can still take it
    # uniform needs one grid every layer can take
    assert set(uniform_allocation(sens, budget_from_avg_bits(sens, 4.5)).grids.values()) == {
        "gguf-q4_0"
    }
    with pytest.raises(ConfigError, match=r"no grid .* can take .*down_proj .288 inputs") as e:
        layer_sensitivity(model, calib256, grids=["gguf-q4_k"])
    assert "gguf-q4_0" in e.value.fix


def test_grid_config_bad_input():
    with pytest.raises(ConfigError, match="unknown grid 'gguf-q3_k'") as e:
        make_config("quant.mixed", {"grids": ["gguf-q8_0", "gguf-q3_k"]})
    assert "gguf-q4_k" in e.value.fix and "gguf-q6_k" in e.value.fix
    with pytest.raises(ConfigError, match=r"both grids .* and bits_options"):
        make_config("quant.mixed", {"grids": ["gguf-q8_0"], "bits_options": [8, 4]})
    with pytest.raises(ConfigError, match="grids is empty"):
        MixedPrecision(grids=[])
    assert MixedPrecision().size_effect().bits == 2  # integer path unchanged
