"""QuantLinear: bit-exact pack/unpack, exact execution paths, packed size."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimline.core import get_codec
from slimline.errors import ConfigError, DataError
from slimline.quant import Rtn, quantize
from slimline.quant.grid import make_scheme
from slimline.quant.linear import EXACT_PATHS, QuantLinear, measure_paths, quant_linears


def _layer(in_f: int = 576, out_f: int = 96, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_f, out_f, bias=bias)


@pytest.mark.parametrize(
    ("bits", "group", "sym"),
    [
        (2, 64, True),
        (3, 128, True),
        (3, None, False),
        (4, 128, True),
        (4, 64, False),
        (8, None, True),
    ],
)
def test_pack_unpack_is_bit_exact(bits: int, group: int | None, sym: bool) -> None:
    q = QuantLinear.from_linear(
        _layer(), make_scheme(bits, group, sym), input_scale=torch.rand(576) + 0.5
    )
    tensors, meta = q.pack()
    cls = get_codec(q.codec)
    r = cls.unpack(tensors, meta)
    for k, t in q.state_dict().items():
        assert torch.equal(t, r.state_dict()[k]), k
    x = torch.randn(3, 576)
    assert torch.equal(q(x), r(x))


def test_unpack_refuses_damaged_tensors() -> None:
    tensors, meta = QuantLinear.from_linear(_layer(), make_scheme(4, 128)).pack()
    tensors["qweight"] = tensors["qweight"][:-1]
    with pytest.raises(DataError, match="qweight"):
        QuantLinear.unpack(tensors, meta)


@pytest.mark.parametrize(
    ("bits", "group", "sym"), [(4, 64, True), (4, 128, False), (8, None, True), (3, 128, True)]
)
def test_exact_paths_match_the_dequantized_weight(bits: int, group: int | None, sym: bool) -> None:
    lin = _layer()
    q = QuantLinear.from_linear(lin, make_scheme(bits, group, sym))
    x = torch.randn(5, 576)
    ref = nn.functional.linear(x, q.dequantized_weight(), q.bias)
    for path in EXACT_PATHS:
        if not q.path_supported(path):
            assert bits == 3 and path.startswith("ort")  # MatMulNBits: 4 and 8 bits only
            continue
        q.set_path(path)
        # measured max |diff|: 0 for the torch paths, <= 2e-6 for ORT's fp32 kernel
        torch.testing.assert_close(q(x), ref, atol=1e-5, rtol=1e-5)


def test_int8_activation_path_is_approximate_and_labelled() -> None:
    q = QuantLinear.from_linear(_layer(), make_scheme(4, 64))
    x = torch.randn(4, 576)
    ref = q(x)
    q.set_path("ort-nbits-int8act")
    rel = float((q(x) - ref).abs().max() / ref.abs().max())
    assert 0 < rel < 0.05  # measured 0.007: activations are rounded to int8 per block
    assert "int8act" in repr(q)


def test_unsupported_path_is_refused() -> None:
    q = QuantLinear.from_linear(_layer(), make_scheme(3, 128))
    with pytest.raises(ConfigError, match="MatMulNBits"):
        q.set_path("ort-nbits")
    with pytest.raises(ConfigError):
        q.set_path("fast")


def test_measure_paths_reports_every_supported_path() -> None:
    q = QuantLinear.from_linear(_layer(), make_scheme(4, 64))
    t = measure_paths(q, tokens=(1,), repeats=1)
    assert set(t) == {"fp32", "dequant-cached", "dequant-fly", "ort-nbits", "ort-nbits-int8act"}
    assert all(v[1] > 0 for v in t.values())
    assert q.path == "dequant-cached"  # measuring leaves the layer as it was


def test_quantized_tiny_model_shrinks_as_it_should(tiny_llama) -> None:
    model = tiny_llama.model
    lin_names = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n
    ]
    n_weights = sum(model.get_submodule(n).weight.numel() for n in lin_names)
    sizes = {}
    for bits in (8, 4, 3, 2):
        m = copy.deepcopy(model)
        rec = quantize(m, Rtn(bits=bits, group_size=32))
        qls = quant_linears(m)
        assert len(qls) == len(lin_names)
        codes = sum(q.qweight.numel() for q in qls.values())
        sizes[bits] = rec["packed_bytes"]
        # codes take exactly bits/8 bytes per weight (padding only at the very end of each layer)
        assert codes == pytest.approx(n_weights * bits / 8, abs=3 * len(qls))
    fp32 = n_weights * 4
    # measured (tiny llama, 73728 weights = 294912 fp32 bytes, g32 scales at 4 B per 32 weights):
    # 8 bit 82944, 4 bit 46080, 3 bit 36864, 2 bit 27648 bytes
    assert sizes[8] < fp32 / 3.5 and sizes[4] < fp32 / 6 and sizes[2] < sizes[3] < sizes[4]
