"""SparseLinear: bitmask + non-zeros, so the artifact's size follows the sparsity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimline.core import get_codec
from slimline.models import tiny_model
from slimline.prune import Magnitude, SparseLinear, prune, to_dense, to_sparse
from slimline.prune.sparse import pack_bits, unpack_bits


def test_bitmask_round_trips_any_length():
    for n in (1, 7, 8, 9, 1000):
        m = torch.rand(n) > 0.5
        packed = pack_bits(m)
        assert packed.numel() == (n + 7) // 8
        assert torch.equal(unpack_bits(packed, n), m)


def test_sparse_linear_is_exact_and_half_the_size_at_50_percent():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight[torch.rand(32, 64) < 0.5] = 0
    sp = SparseLinear.from_linear(lin)
    x = torch.randn(3, 64)
    assert torch.equal(sp(x), lin(x))
    tensors, meta = sp.pack()
    again = get_codec("prune.sparse").unpack(tensors, meta)
    assert torch.equal(again(x), lin(x))
    stored = tensors["bitmask"].numel() + tensors["values"].numel() * 4
    dense = lin.weight.numel() * 4
    # 1 bit + ~0.5 x 32 bits per weight: 17/32 of dense (+/- the random nnz)
    assert stored / dense == pytest.approx(17 / 32, abs=0.02)


def test_sparse_4bit_values_stay_close_and_cost_about_3_bits_per_weight():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64, bias=False)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(64, 128) >= 0.5)
    sp = SparseLinear.from_linear(lin, bits=4, group_size=64)
    w = sp.dense_weight()
    assert torch.equal(w == 0, lin.weight == 0) or ((w == 0) >= (lin.weight == 0)).all()
    rel = float((w - lin.weight.detach()).norm() / lin.weight.detach().norm())
    assert rel < 0.1  # measured 0.06 for 4-bit asymmetric, group 64
    tensors, _ = sp.pack()
    bits = 8 * sum(t.numel() * t.element_size() for t in tensors.values()) / lin.weight.numel()
    assert bits < 4.0  # measured ~3.4: 1 (mask) + 0.5 x 4 (values) + group scales/zeros


def test_pruned_model_artifact_is_smaller_and_loads_back(tmp_path):
    from slimline.artifact import load_artifact, save_artifact

    lm = tiny_model("llama", hidden=128, intermediate=256)
    prune(lm, Magnitude(sparsity=0.5))
    ids = torch.randint(0, 49152, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = lm.model(input_ids=ids).logits
    dense_info = save_artifact(lm, None, tmp_path / "dense")
    rec = to_sparse(lm.model)
    assert len(rec["modules"]) == 14  # 7 linears x 2 blocks; the tied head stays dense
    sparse_info = save_artifact(lm, None, tmp_path / "sparse")
    saved = dense_info.files["model.safetensors"] - sparse_info.files["model.safetensors"]
    assert saved == pytest.approx(rec["dense_weight_bytes"] - rec["sparse_weight_bytes"], rel=0.01)
    model, _, _ = load_artifact(tmp_path / "sparse")
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, ref, atol=1e-5)
    assert to_dense(model) == 14
    q = model.model.layers[0].self_attn.q_proj
    assert type(q) is nn.Linear and float((q.weight == 0).float().mean()) == pytest.approx(0.5)
