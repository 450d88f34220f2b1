"""Static cost: analytic FLOPs against torch's FlopCounterMode, exact parameter/byte counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimline.errors import InputError
from slimline.models import get_arch, tiny_model
from slimline.profile import flops_per_token, param_stats, size_on_disk


def _counted(model: nn.Module, ids: torch.Tensor) -> tuple[float, float]:
    """(total FLOPs, attention-matmul FLOPs) as FlopCounterMode counts one forward."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(input_ids=ids)
    ops = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    return float(fc.get_total_flops()), float(ops.get("aten.bmm", 0))


@pytest.mark.parametrize("family", ["llama", "bert", "gpt2"])
@pytest.mark.parametrize("seq_len", [16, 128])
def test_analytic_flops_match_flop_counter(family: str, seq_len: int) -> None:
    lm = tiny_model(family)
    # CPU SDPA kernels are invisible to FlopCounterMode (it counts 0): eager attention is counted.
    lm.model.set_attn_implementation("eager")
    total, attn = _counted(lm.model, torch.randint(5, 1000, (1, seq_len)))
    ours = flops_per_token(lm.model, lm.arch, seq_len)
    # Measured: llama at 128 tokens 6,504,448 FLOPs/token both ways (ratio 1.000000); bert
    # 196,672 both ways (pooler included); gpt2 6,488,064 both ways. Allow 1% for future kernels.
    assert ours["total"] * seq_len == pytest.approx(total, rel=0.01)
    # The context-dependent part alone (Q·Kᵀ and A·V batched matmuls): exact as well.
    assert ours["attention"] * seq_len == pytest.approx(attn, rel=0.01)
    assert attn > 0


def test_flops_grow_with_context_only_through_attention() -> None:
    lm = tiny_model("llama")
    short = flops_per_token(lm.model, lm.arch, 64)
    long = flops_per_token(lm.model, lm.arch, 512)
    assert long["linear"] == short["linear"] and long["lm_head"] == short["lm_head"]
    # 2 blocks x 2 products x 2 FLOPs x 4 heads x 16 dims x 448 more keys.
    assert long["attention"] - short["attention"] == 2 * 2 * 2 * 4 * 16 * 448
    decode = flops_per_token(lm.model, lm.arch, 64, mode="decode")
    assert decode["attention"] == short["attention"]
    with pytest.raises(InputError):
        flops_per_token(lm.model, lm.arch, 0)


def test_flops_follow_actual_shapes_after_structural_edit() -> None:
    """A model whose MLP lost half its channels is counted as it is, not from its old config."""
    lm = tiny_model("llama")
    before = flops_per_token(lm.model, lm.arch, 32)["linear"]
    for block in lm.arch.blocks(lm.model):
        mlp = block.mlp
        keep = mlp.gate_proj.out_features // 2
        mlp.gate_proj = nn.Linear(64, keep, bias=False)
        mlp.up_proj = nn.Linear(64, keep, bias=False)
        mlp.down_proj = nn.Linear(keep, 64, bias=False)
    after = flops_per_token(lm.model, lm.arch, 32)["linear"]
    # Each block loses 3 x 64 x 64 MACs = 12,288 -> 24,576 FLOPs; 2 blocks.
    assert before - after == 2 * 2 * 3 * 64 * 64


class _PackedLinear(nn.Module):
    """A compressed linear as quantizers write them: int8 codes + fp16 scales, no weight Parameter."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        codes = torch.zeros(out_features, in_features, dtype=torch.int8)
        codes[0, 0] = 3
        self.register_buffer("qweight", codes)
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float16))
        self.register_buffer("scratch", torch.zeros(1000), persistent=False)  # not stored

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.qweight.float() * self.scale.float()[:, None]).T


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: one tensor, two names
        self.packed = _PackedLinear(4, 3)
        self.norm = nn.LayerNorm(4).to(torch.bfloat16)
        with torch.no_grad():
            self.embed.weight[0].zero_()  # 4 zeros


def test_param_stats_exact_by_dtype_with_tied_and_packed() -> None:
    s = param_stats(_Toy())
    assert s.by_dtype == {
        "bfloat16": {"tensors": 2, "elements": 8, "bytes": 16},  # LayerNorm weight + bias
        "float16": {"tensors": 1, "elements": 3, "bytes": 6},  # scales
        "float32": {"tensors": 1, "elements": 40, "bytes": 160},  # the tied embedding, once
        "int8": {"tensors": 1, "elements": 12, "bytes": 12},  # packed codes
    }
    assert s.bytes == 16 + 6 + 160 + 12
    # Logical parameters: embedding 40 (once) + norm 8 + the packed layer's 4 x 3 weights.
    assert s.total == 40 + 8 + 12
    # Zeros: the embedding's first row (4); the packed layer has no dense view: counted dense.
    assert s.nonzero == s.total - 4 - 4  # LayerNorm bias starts at zero (4)


def test_param_stats_tiny_llama_matches_state_dict() -> None:
    lm = tiny_model("llama")
    assert lm.arch.tied(lm.model)
    s = param_stats(lm.model)
    sd = lm.model.state_dict()
    unique = {t.data_ptr(): t for t in sd.values()}
    assert s.total == sum(t.numel() for t in unique.values()) == 3_219_776
    naive = sum(t.numel() for t in sd.values())
    assert naive - s.total == lm.model.get_input_embeddings().weight.numel()  # counted once
    assert s.bytes == 4 * s.total and list(s.by_dtype) == ["float32"]


def test_size_on_disk(tmp_path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_bytes(b"y" * 23)
    assert size_on_disk(tmp_path) == 123
    assert size_on_disk(tmp_path / "a.bin") == 100
    with pytest.raises(InputError, match="does not exist"):
        size_on_disk(tmp_path / "missing")


def test_arch_of_bare_module_is_read() -> None:
    lm = tiny_model("opt")
    assert get_arch(lm.model).family == "opt"
    f = flops_per_token(lm.model, lm.arch, 8)
    assert f["total"] == f["linear"] + f["attention"] + f["lm_head"]
