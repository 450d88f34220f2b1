"""Observers, SmoothQuant migration and W8A8 linears."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimline.core import Context, apply_technique, make_config
from slimline.errors import ConfigError, DataError
from slimline.quant.observers import (
    MinMaxObserver,
    MseObserver,
    PercentileObserver,
    fake_quant,
    make_observer,
)
from slimline.quant.smoothquant import (
    W8A8,
    SmoothQuant,
    W8A8Linear,
    act_absmax,
    int8_matmul,
    quantize_w8a8,
    set_w8a8_backend,
    smooth,
    smooth_pair,
)

torch.set_num_threads(1)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).pow(2).sum() / b.pow(2).sum())


# --- observers --------------------------------------------------------------------------------


def _heavy_tailed(n: int = 20000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    x[torch.randint(0, n, (10,), generator=g), 0] = 80.0  # a handful of huge outliers
    return x


def test_minmax_brackets_all_data_per_tensor_and_channel():
    x = torch.randn(1000, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 1.0
    ob = MinMaxObserver(bits=8, symmetric=False, granularity="channel")
    ob.observe(x[:500])
    ob.observe(x[500:])
    lo, hi = ob.range()
    assert torch.equal(lo, x.amin(0)) and torch.equal(hi, x.amax(0))
    scale, zero = ob.qparams()
    assert scale.shape == (4,) and zero.shape == (4,)
    # every value is on the grid: error at most half a step
    assert float(((fake_quant(x, scale, zero, 8, False) - x).abs() / scale).max()) <= 0.5 + 1e-4
    st = MinMaxObserver(granularity="tensor")
    st.observe(x)
    s, z = st.qparams()
    assert s.shape == () and float(z) == 0.0
    assert float(s) == pytest.approx(float(x.abs().max()) / 127, rel=1e-6)


def test_percentile_clips_outliers():
    x = _heavy_tailed()
    mm, pc = MinMaxObserver(), PercentileObserver(percentile=99.9)
    mm.observe(x)
    pc.observe(x)
    lo, hi = pc.range()
    assert float(mm.range()[1]) == 80.0
    # 99.9th percentile of |N(0,1)| is ~3.3; the 10 outliers (0.006%) are clipped away
    assert 2.5 < float(hi) < 5.0, float(hi)  # measured 3.34
    assert float(lo) == -float(hi)


def test_mse_range_beats_minmax_on_heavy_tailed_data():
    torch.manual_seed(0)
    x = torch.distributions.StudentT(3.0).sample((20000, 8))  # heavy tails, max |x| = 55
    errs = {}
    for bits in (8, 4):
        for name in ("minmax", "mse"):
            ob = make_observer(name, bits=bits, symmetric=True, granularity="tensor")
            ob.observe(x)
            s, z = ob.qparams()
            errs[name, bits] = float((fake_quant(x, s, z, bits, True) - x).pow(2).mean())
    # measured MSE: 8-bit minmax 1.58e-2 vs mse 1.17e-2; 4-bit minmax 1.74 vs mse 0.287
    assert errs["mse", 8] < 0.85 * errs["minmax", 8], errs
    assert errs["mse", 4] < 0.3 * errs["minmax", 4], errs
    # per-channel MSE ranges are at least as good as one per-tensor range
    ob = MseObserver(bits=4, granularity="channel")
    ob.observe(x)
    s, z = ob.qparams()
    assert s.shape == (8,)
    assert float((fake_quant(x, s, z, 4, True) - x).pow(2).mean()) <= errs["mse", 4] * 1.01


def test_observers_refuse_nan_and_bad_settings():
    ob = MinMaxObserver()
    with pytest.raises(DataError, match="NaN/inf"):
        ob.observe(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(DataError, match="NaN/inf"):
        PercentileObserver().observe(torch.tensor([[float("inf")]]))
    with pytest.raises(DataError, match="seen no data"):
        MseObserver().qparams()
    with pytest.raises(ConfigError, match="percentile"):
        PercentileObserver(percentile=20)
    with pytest.raises(ConfigError, match="unknown observer"):
        make_observer("histogram")


# --- SmoothQuant on a layer with activation outliers -----------------------------------------


def _outlier_layer(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    C, n_out, T = 256, 128, 512
    x = torch.randn(T, C, generator=g)
    x[:, :4] *= 60.0  # LLM-style: a few channels 60x larger on every token
    lin = nn.Linear(C, n_out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, C, generator=g) * 0.05)
    return x, lin


def test_smoothing_is_exact_in_fp32_and_lowers_w8a8_error():
    x, lin = _outlier_layer()
    ref = lin(x).detach()
    plain = _rel_err(W8A8Linear.from_linear(lin)(x), ref)

    norm = nn.LayerNorm(256, elementwise_affine=True)  # stand-in for the folding target
    lin_s = nn.Linear(256, 128)
    lin_s.load_state_dict(lin.state_dict())
    s = smooth_pair(norm, [lin_s], x.abs().amax(0), alpha=0.5)
    xs = x / s  # what the smoothed norm now emits
    assert torch.allclose(lin_s(xs), ref, atol=1e-4)  # the migration changes nothing in fp32
    assert torch.allclose(norm.weight, 1.0 / s)
    smoothed = _rel_err(W8A8Linear.from_linear(lin_s)(xs), ref)
    # measured: plain W8A8 8.2e-4, smoothed 4.5e-5 relative squared error
    assert smoothed < 0.2 * plain, (plain, smoothed)


def test_alpha_out_of_range_is_refused():
    _, lin = _outlier_layer()
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\]"):
        smooth_pair(nn.LayerNorm(256), [lin], torch.ones(256), alpha=1.5)
    with pytest.raises(ConfigError, match="alpha"):
        make_config("quant.smoothquant", {"alpha": -0.1})
    with pytest.raises(ConfigError, match="smooth_alpha"):
        make_config("quant.w8a8", {"smooth_alpha": 2})


def test_int8_matmul_is_exact_int32_and_w8a8_static():
    g = torch.Generator().manual_seed(1)
    xq = torch.randint(-128, 128, (20, 2500), generator=g, dtype=torch.int8)
    wq = torch.randint(-127, 128, (30, 2500), generator=g, dtype=torch.int8)
    exact = xq.long() @ wq.long().t()
    assert torch.equal(int8_matmul(xq, wq, "sim").long(), exact)
    assert torch.equal(int8_matmul(xq, wq, "int_mm").long(), exact)
    x, lin = _outlier_layer()
    ob = MinMaxObserver()
    ob.observe(x)
    static = W8A8Linear.from_linear(lin, act="static", act_scale=ob.qparams()[0])
    assert _rel_err(static(x), lin(x)) < 0.05  # measured 3.3e-3 (one scale for the outliers too)
    with pytest.raises(ConfigError, match="activation scale"):
        W8A8Linear.from_linear(lin, act="static")
    # pack / unpack round trip (artifact codec)
    t, meta = static.pack()
    again = W8A8Linear.unpack(t, meta)
    assert torch.equal(again(x), static(x))


# --- on real SmolLM2 layers (truncated real model) --------------------------------------------


@pytest.fixture(scope="module")
def smol2(smollm2_2blocks):
    return smollm2_2blocks


@pytest.fixture(scope="module")
def calib_ids(smol2):
    from slimline.data import calibration_blocks

    return calibration_blocks(smol2.tokenizer, n=4, seq_len=128, seed=0)


@pytest.fixture(scope="module")
def calib_short(smol2):
    from slimline.data import calibration_blocks

    return calibration_blocks(smol2.tokenizer, n=4, seq_len=64, seed=0)


def test_smoothquant_lowers_w8a8_error_on_real_smollm2_layers(smol2, calib_ids):
    import copy

    model = copy.deepcopy(smol2.model)
    blk = "model.layers.1"
    names = [f"{blk}.self_attn.q_proj", f"{blk}.mlp.gate_proj"]
    mods = {n: model.get_submodule(n) for n in names}

    # capture inputs before and after smoothing; outputs must agree in fp32
    def layer_errs(m: nn.Module) -> dict[str, float]:
        xs: dict[str, torch.Tensor] = {}
        from slimline.quant.smoothquant import capture_linear_inputs

        capture_linear_inputs(
            m,
            calib_ids,
            {n: m.get_submodule(n) for n in names},
            lambda n, x: xs.__setitem__(n, x.clone()),
            batch_size=4,
        )
        out = {}
        for n in names:
            lin = m.get_submodule(n)
            ref = lin(xs[n])
            out[n] = _rel_err(W8A8Linear.from_linear(lin)(xs[n]), ref)
        return out

    before = layer_errs(model)
    with torch.no_grad():
        ref_logits = model(input_ids=calib_ids[:1]).logits
    rec = smooth(model, calib_ids, alpha=0.5)
    with torch.no_grad():
        assert torch.allclose(
            model(input_ids=calib_ids[:1]).logits, ref_logits, atol=1e-3, rtol=1e-3
        )
    after = layer_errs(model)
    assert rec["pairs"] == 4 and rec["outlier_ratio_after"] < rec["outlier_ratio_before"]
    # measured (2 real blocks, 4x128 tokens): q_proj 1.35e-3 -> 2.2e-4, gate_proj 4.6e-4 -> 2.6e-4
    for n in names:
        assert after[n] < 0.8 * before[n], (n, before[n], after[n])
    del mods


def test_w8a8_technique_end_to_end_smoothing_helps_logits(smol2, calib_short):
    import copy

    ref = smol2.model(input_ids=calib_short).logits.detach()
    errs = {}
    for alpha in (None, 0.5):
        m = copy.deepcopy(smol2.model)
        ctx = Context(calib=calib_short)
        rec = apply_technique(m, W8A8(smooth_alpha=alpha, act="dynamic"), ctx)
        assert rec["layers"] == 14  # 7 linears x 2 blocks, lm_head ignored
        with torch.no_grad():
            errs[alpha] = _rel_err(m(input_ids=calib_short).logits, ref)
    # measured (4x64 tokens): plain W8A8 logits rel. sq. error 2.4e-4, with SmoothQuant 0.5: 1.9e-4
    assert errs[0.5] < errs[None], errs
    static = {}
    for ob in ("minmax", "mse"):
        m = copy.deepcopy(smol2.model)
        quantize_w8a8(m, calib_short, W8A8(act="static", observer=ob, smooth_alpha=0.5))
        with torch.no_grad():
            static[ob] = _rel_err(m(input_ids=calib_short).logits, ref)
    # measured: static per-tensor minmax 3.2e-3, mse 1.6e-3 (the MSE range pays off on real data)
    assert static["mse"] < 0.75 * static["minmax"] and static["mse"] < 0.01, static


def test_fbgemm_backend_runs_real_int8_gemm_close_to_the_simulation(smol2, calib_short):
    import copy

    m = copy.deepcopy(smol2.model)
    quantize_w8a8(m, calib_short, W8A8(smooth_alpha=0.5))
    ref = smol2.model(input_ids=calib_short).logits.detach()
    with torch.no_grad():
        sim = m(input_ids=calib_short).logits
        assert set_w8a8_backend(m, "fbgemm") == 14
        fb = m(input_ids=calib_short).logits
        one = m(input_ids=calib_short[:1, :1]).logits  # decode-like: one token per call
        one_sim = copy.deepcopy(m)
        set_w8a8_backend(one_sim, "sim")
        one_ref = one_sim(input_ids=calib_short[:1, :1]).logits
    assert not torch.equal(fb, sim)  # a different kernel really ran (7-bit per-call activations)
    # measured rel. sq. logit error, 4x64 tokens: sim 1.9e-4, fbgemm 6.7e-4 (7-bit per-token
    # ranges; fbgemm's own one range per call gave 7.3e-3); one token: fbgemm vs sim 1.4e-4
    assert _rel_err(fb, ref) < 0.002 and _rel_err(one, one_ref) < 0.002
    layer = next(x for x in m.modules() if isinstance(x, W8A8Linear))
    twin = copy.deepcopy(layer)  # prepacked weights are rebuilt after a copy
    x = torch.randn(3, layer.in_features)
    assert twin.backend == "fbgemm" and torch.equal(twin(x), layer(x))
    t, meta = layer.pack()
    assert torch.equal(W8A8Linear.unpack(t, meta)(x), layer(x))
    with pytest.raises(ConfigError, match="act='dynamic'"):
        W8A8Linear(4, 4, False, act="static", backend="fbgemm")
    with pytest.raises(ConfigError, match="dynamic"):
        W8A8(act="static", backend="fbgemm")


def test_smoothquant_needs_calibration_and_finite_stats(smol2):
    import copy

    m = copy.deepcopy(smol2.model)
    with pytest.raises(DataError, match="calibration"):
        apply_technique(m, SmoothQuant(), Context())
    q = m.get_submodule("model.layers.0.self_attn.q_proj")
    with torch.no_grad():
        m.get_submodule("model.layers.0.input_layernorm").weight[0] = float("nan")
    with pytest.raises(DataError, match="NaN/inf"):
        act_absmax(m, torch.ones(1, 8, dtype=torch.long), {"q": q})
