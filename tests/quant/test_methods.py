"""RTN, GPTQ and AWQ do what they are for: measured layer output errors on held-out inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimline.quant import Awq, Gptq, QuantLinear, Rtn, gptq_quantize, quantize
from slimline.quant.awq import output_error, scaled_fake_quant, search_scale
from slimline.quant.gptq import layer_error
from slimline.quant.grid import fake_quantize, make_scheme


def _inputs(model: nn.Module, names: list[str], batches: list[dict]) -> dict[str, torch.Tensor]:
    """Inputs of the named Linear layers over the given forward batches, [tokens, in]."""
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hs = [
        model.get_submodule(n).register_forward_hook(
            lambda _m, a, _o, n=n: got[n].append(a[0].detach().reshape(-1, a[0].shape[-1]))
        )
        for n in names
    ]
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in hs:
        h.remove()
    return {n: torch.cat(v) for n, v in got.items()}


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.double().T @ x.double() / x.shape[0]


SMOL_LAYERS = ["model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"]


@pytest.fixture(scope="module")
def smol_acts(smollm2_2blocks):
    from slimline.data import calibration_blocks, eval_blocks

    tok = smollm2_2blocks.tokenizer
    cal = calibration_blocks(tok, "python-docs", n=32, seq_len=128, seed=0)
    ev = eval_blocks(tok, "python-docs", seq_len=128, max_blocks=4)
    m = smollm2_2blocks.model
    f = lambda ids: [{"input_ids": ids[i : i + 4]} for i in range(0, len(ids), 4)]  # noqa: E731
    return _inputs(m, SMOL_LAYERS, f(cal)), _inputs(m, SMOL_LAYERS, f(ev))


@pytest.mark.parametrize("name", SMOL_LAYERS)
def test_gptq_beats_rtn_on_real_smollm2_layers_held_out(smollm2_2blocks, smol_acts, name) -> None:
    cal, ev = smol_acts
    w = smollm2_2blocks.model.get_submodule(name).weight.detach()
    scheme = make_scheme(4, 128)
    # 4096 calibration tokens for 1536-wide down_proj: damp 0.1 (at 0.01 GPTQ overfits the small
    # sample: held-out 3.57 vs RTN 5.20; llm-compressor's 0.01 suits the full 65k-token protocol)
    codes, scale, zero = gptq_quantize(w, _hessian(cal[name]).float(), scheme, damp=0.1)
    q = QuantLinear.from_codes(codes, scale, zero, scheme)
    h_eval = _hessian(ev[name])
    e_gptq = layer_error(w, q.dequantized_weight(), h_eval)
    e_rtn = layer_error(w, fake_quantize(w, scheme), h_eval)
    # measured on 2048 held-out python-docs tokens:
    # q_proj gptq 1.14 vs rtn 10.71; down_proj gptq 2.28 vs rtn 5.20
    assert e_gptq < 0.75 * e_rtn


def test_gptq_options_all_beat_rtn_and_groups_stay_static(smollm2_2blocks, smol_acts) -> None:
    cal, ev = smol_acts
    name = SMOL_LAYERS[0]
    w = smollm2_2blocks.model.get_submodule(name).weight.detach()
    scheme = make_scheme(4, 128, symmetric=False)
    h, h_eval = _hessian(cal[name]).float(), _hessian(ev[name])
    e_rtn = layer_error(w, fake_quantize(w, scheme), h_eval)
    for actorder, static in [(False, False), (False, True), (True, True)]:
        codes, scale, zero = gptq_quantize(
            w, h, scheme, damp=0.1, actorder=actorder, static_groups=static, observer="minmax"
        )
        if static:  # the grid is the min-max grid of the original weight, only codes differ
            from slimline.quant.grid import qparams

            torch.testing.assert_close(scale, qparams(w, scheme)[0])
        q = QuantLinear.from_codes(codes, scale, zero, scheme)
        # measured asym g128 (q_proj): rtn 8.16; gptq 2.73 (plain), 2.78 (static groups),
        # 1.06 (act-order + static groups)
        assert layer_error(w, q.dequantized_weight(), h_eval) < 0.75 * e_rtn, (actorder, static)


@pytest.mark.parametrize("name", SMOL_LAYERS)
def test_gptq_clip_search_grid_beats_min_max_grid_held_out(smollm2_2blocks, smol_acts, name):
    cal, ev = smol_acts
    w = smollm2_2blocks.model.get_submodule(name).weight.detach()
    scheme = make_scheme(4, 64)  # the benchmark's W4 g64 sym
    h, h_eval = _hessian(cal[name]).float(), _hessian(ev[name])
    err = {}
    for observer in ("minmax", "mse"):
        codes, scale, zero = gptq_quantize(w, h, scheme, damp=0.1, observer=observer)
        q = QuantLinear.from_codes(codes, scale, zero, scheme)
        err[observer] = layer_error(w, q.dequantized_weight(), h_eval)
    # measured on 2048 held-out tokens (mse vs minmax): q_proj 1.030 vs 1.124,
    # down_proj 1.942 vs 2.273
    assert err["mse"] < 0.95 * err["minmax"]


def test_clip_search_never_rounds_worse_than_min_max() -> None:
    from slimline.quant.grid import dequantize, qparams, quantize, search_qparams

    torch.manual_seed(0)
    w = torch.randn(32, 200) * torch.rand(1, 200) * 3  # ragged last group (200 = 3 x 64 + 8)
    w[0, 5] = 40.0  # an outlier: clipping it pays
    cw = torch.rand(200)
    for sym in (True, False):
        scheme = make_scheme(4, 64, symmetric=sym)

        def group_err(s, z, scheme=scheme):
            d = (w - dequantize(quantize(w, s, z, scheme), s, z, scheme)) ** 2 * cw
            return torch.stack([d[:, i : i + 64].sum(1) for i in range(0, 200, 64)], 1)

        e_mm, e_cs = group_err(*qparams(w, scheme)), group_err(*search_qparams(w, scheme, cw))
        # measured: 135.2 vs 148.3 (sym)
        assert (e_cs <= e_mm + 1e-6).all() and e_cs.sum() < 0.95 * e_mm.sum()


def test_gptq_beats_rtn_on_minilm_layers(minilm) -> None:
    from slimline.data import sentences

    tok = minilm.tokenizer
    names = ["encoder.layer.2.attention.self.query", "encoder.layer.2.intermediate.dense"]

    def batches(split: str, n: int) -> list[dict]:
        enc = tok(
            sentences("python-docs", split=split, n=n),
            truncation=True,
            max_length=128,
            padding=True,
            return_tensors="pt",
        )
        return [{k: v[i : i + 8] for k, v in enc.items()} for i in range(0, n, 8)]

    cal = _inputs(minilm.model, names, batches("fit", 32))
    ev = _inputs(minilm.model, names, batches("eval", 16))
    scheme = make_scheme(4, 128)
    for name in names:
        w = minilm.model.get_submodule(name).weight.detach()
        codes, scale, zero = gptq_quantize(w, _hessian(cal[name]).float(), scheme)
        w_g = QuantLinear.from_codes(codes, scale, zero, scheme).dequantized_weight()
        h_eval = _hessian(ev[name])
        e_gptq, e_rtn = (
            layer_error(w, w_g, h_eval),
            layer_error(w, fake_quantize(w, scheme), h_eval),
        )
        # measured (MiniLM block 2, held-out paragraphs): query gptq 1.16 vs rtn 4.83;
        # intermediate gptq 4.89 vs rtn 22.8
        assert 0 < e_gptq < 0.8 * e_rtn, (name, e_gptq, e_rtn)


def test_awq_beats_rtn_on_a_layer_with_salient_channels() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 512, generator=g) * 0.02
    x = torch.randn(4096, 512, generator=g)
    x[:, :8] *= 30  # a few salient input channels, as in LLM activations
    x_ev = torch.randn(2048, 512, generator=g)
    x_ev[:, :8] *= 30
    h = x.T @ x / x.shape[0]
    h_ev = x_ev.T @ x_ev / x_ev.shape[0]
    scheme = make_scheme(4, 128)
    s, alpha, err, rtn_err = search_scale([w], x.abs().mean(0), h, scheme)
    e_awq = output_error(w, scaled_fake_quant(w, s, scheme), h_ev)
    e_rtn = output_error(w, fake_quantize(w, scheme), h_ev)
    # measured: alpha 0.21, held-out output error awq 5.60 vs rtn 9.80
    assert 0 < alpha <= 1 and err < rtn_err
    assert e_awq < 0.7 * e_rtn


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_methods_on_truncated_smollm2_end_to_end(smollm2_2blocks) -> None:
    from slimline.data import calibration_blocks, eval_blocks

    tok = smollm2_2blocks.tokenizer
    cal = calibration_blocks(tok, "python-docs", n=8, seq_len=128, seed=0)
    ev = eval_blocks(tok, "python-docs", seq_len=128, max_blocks=2)
    ref = _logits(smollm2_2blocks.model, ev)
    errs = {}
    for cfg in (Rtn(bits=4), Gptq(bits=4), Awq(bits=4, n_grid=10), Rtn(bits=8, group_size=None)):
        m = copy.deepcopy(smollm2_2blocks.model)
        rec = quantize(m, cfg, data=cal)
        assert rec["layers"] == 14
        assert len(rec["ragged_layers"]) == (12 if cfg.group_size else 0)  # 576 % 128 != 0
        assert all(isinstance(m.get_submodule(r["name"]), QuantLinear) for r in rec["per_layer"])
        assert isinstance(m.lm_head, nn.Linear)  # kept unless asked
        errs[f"{cfg.kind}{cfg.bits}"] = float((_logits(m, ev) - ref).pow(2).mean())
    # measured logit MSE vs fp32 (2 blocks, held-out): rtn4 1.26, gptq4 0.33, awq4 0.53,
    # rtn8 0.0042
    assert errs["quant.rtn8"] > 0  # every method changed the model: none is a no-op
    assert errs["quant.gptq4"] < errs["quant.rtn4"]
    assert errs["quant.awq4"] < errs["quant.rtn4"]
    assert errs["quant.rtn8"] < 0.05 * errs["quant.rtn4"]


def test_awq_folds_into_norms_and_keeps_the_function(smollm2_2blocks) -> None:
    from slimline.data import calibration_blocks

    cal = calibration_blocks(smollm2_2blocks.tokenizer, "python-docs", n=4, seq_len=128, seed=0)
    m = copy.deepcopy(smollm2_2blocks.model)
    norm_before = m.model.layers[0].input_layernorm.weight.detach().clone()
    rec = quantize(m, Awq(bits=4, n_grid=6), data=cal)
    folded = {r["name"].rsplit(".", 1)[-1]: r["folded"] for r in rec["per_layer"]}
    # q/k/v into input_layernorm, gate/up into post_attention_layernorm, down into up_proj rows;
    # o_proj (GQA: v is 192 wide, o takes 576) keeps a run-time input scale
    assert folded == {
        "q_proj": True,
        "k_proj": True,
        "v_proj": True,
        "gate_proj": True,
        "up_proj": True,
        "down_proj": True,
        "o_proj": False,
    }
    alpha_qkv = rec["per_layer"][0]["alpha"]  # measured 0.2 (q/k/v of block 0)
    assert alpha_qkv > 0
    assert not torch.equal(m.model.layers[0].input_layernorm.weight, norm_before)
    assert m.model.layers[0].self_attn.o_proj.input_scale is not None


def test_gptq_shares_one_hessian_product_per_input_tensor(monkeypatch) -> None:
    """q/k/v read the same tensor (and gate/up): one x^T x and one accumulator each, and the
    same Hessians as computing it per layer."""
    from slimline.models import tiny_model
    from slimline.quant import gptq as gptq_mod

    lm = tiny_model("llama")
    ids = torch.randint(0, 1000, (12, 64), generator=torch.Generator().manual_seed(0))
    hessians: dict[str, dict[str, torch.Tensor]] = {}
    calls = {"n": 0}
    add = gptq_mod._HessianAccumulator.add

    def counting(self, x):
        calls["n"] += 1
        return add(self, x)

    class PerLayer:  # the plain per-layer accumulation, no sharing (not ``shareable``)
        def __init__(self, name, n):
            self.acc = gptq_mod._HessianAccumulator(name, n)

        def add(self, x):
            self.acc.add(x)

    for shared in (True, False):
        m = copy.deepcopy(lm.model)
        got = hessians.setdefault(str(shared), {})

        def keep(step, lins, stats, undo, layers, got=got):
            for n, st in stats.items():
                got[n] = (st if hasattr(st, "h") else st.acc).h.clone()
            return {}

        monkeypatch.setattr(gptq_mod._HessianAccumulator, "add", counting)
        from slimline.core import Context
        from slimline.quant.config import calibrated_apply

        make = gptq_mod._HessianAccumulator if shared else PerLayer
        calibrated_apply(m, Gptq(bits=4, group_size=32), Context(calib=ids), "gptq", make, keep)
        if shared:
            # 2 blocks x 2 batches (12 samples, batch_size 8) x 4 distinct inputs, not 7 layers
            assert calls["n"] == 2 * 2 * 4, calls
    assert hessians["True"].keys() == hessians["False"].keys() and len(hessians["True"]) == 14
    for n, h in hessians["True"].items():
        torch.testing.assert_close(h, hessians["False"][n], rtol=0, atol=0)


def test_wide_hessian_in_row_slices_matches_one_gemm(monkeypatch) -> None:
    """From ``WIDE`` inputs on, H is summed in fp32 (as the reference GPTQ does) and x^T x is
    formed 512 rows at a time: the same Hessian up to fp32 rounding."""
    from slimline.quant import gptq as gptq_mod

    xs = [torch.randn(2, 64, 1100, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    one = gptq_mod._HessianAccumulator("l", 1100)
    monkeypatch.setattr(gptq_mod._HessianAccumulator, "WIDE", 1000)
    sliced = gptq_mod._HessianAccumulator("l", 1100)
    assert one.h.dtype == torch.float64 and sliced.h.dtype == torch.float32
    for x in xs:
        one.add(x)
        sliced.add(x)
    assert sliced.count == one.count == 3 * 128
    torch.testing.assert_close(sliced.h.double(), one.h, rtol=1e-5, atol=1e-5)


def test_layer_and_rtn_error_in_slices_match_the_formula(monkeypatch) -> None:
    """The output error computed a slice of rows and of H's columns at a time is
    tr((W - W_hat) H (W - W_hat)^T) / 2, and RTN's error is that of the whole RTN weight."""
    from slimline.quant import gptq as gptq_mod

    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(50, 1100, generator=g), torch.randn(300, 1100, generator=g)
    h = 2 / 300 * x.T @ x
    scheme = make_scheme(4, 64, True)
    w_hat = fake_quantize(w, scheme)
    d = (w - w_hat).double()
    direct = float(torch.trace(d @ h.double() @ d.T) / 2)
    monkeypatch.setattr(gptq_mod, "_rows", lambda w: 7)  # 8 row slices, 2 column slices
    assert gptq_mod.layer_error(w, w_hat, h) == pytest.approx(direct, rel=1e-10)
    assert gptq_mod.rtn_error(w, scheme, h) == pytest.approx(direct, rel=1e-10)
