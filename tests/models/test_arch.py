import pytest
import torch
from torch import nn

from slimline.errors import UnsupportedArchitectureError
from slimline.models import get_arch, tiny_model

EXPECTED = {
    "llama": ("llama", "model.layers", "causal-lm"),
    "mistral": ("llama", "model.layers", "causal-lm"),
    "qwen2": ("llama", "model.layers", "causal-lm"),
    "gpt2": ("gpt2", "transformer.h", "causal-lm"),
    "opt": ("opt", "model.decoder.layers", "causal-lm"),
    "bert": ("bert", "encoder.layer", "encoder"),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_arch_map_resolves_every_role_on_tiny_models(family):
    lm = tiny_model(family, n_blocks=2, hidden=64, n_heads=4, n_kv_heads=2)
    arch = lm.arch
    fam, path, kind = EXPECTED[family]
    assert (arch.family, arch.block_path, arch.kind) == (fam, path, kind)
    blocks = arch.blocks(lm.model)
    assert len(blocks) == arch.n_blocks(lm.model.config) == 2
    for role in arch.roles:
        mods = arch.linear(blocks[0], role)
        for m in mods if isinstance(mods, tuple) else (mods,):
            assert isinstance(m, nn.Module)
    assert arch.hidden(lm.model.config) == 64
    assert arch.n_heads(lm.model.config) == 4
    assert arch.head_dim(lm.model.config) == 16
    expected_kv = 2 if fam == "llama" else 4
    assert arch.n_kv_heads(lm.model.config) == expected_kv
    assert arch.intermediate(lm.model.config) == 128
    # kv projection width follows the kv-head count (grouped-query attention)
    if "k" in arch.roles:
        k = arch.linear(blocks[0], "k")
        assert k.weight.shape[0] == expected_kv * 16
    lm.model.get_submodule(arch.embed)
    if arch.lm_head:
        assert arch.tied(lm.model) == (family in ("llama", "gpt2", "opt"))


def test_arch_map_on_real_smollm2(smollm2):
    arch, cfg = smollm2.arch, smollm2.model.config
    assert arch.family == "llama"
    assert (arch.n_blocks(cfg), arch.hidden(cfg), arch.n_heads(cfg), arch.n_kv_heads(cfg)) == (
        30,
        576,
        9,
        3,
    )
    assert arch.head_dim(cfg) == 64 and arch.intermediate(cfg) == 1536
    assert arch.tied(smollm2.model)
    gate, up = arch.linear(arch.blocks(smollm2.model)[0], "mlp_in")
    assert gate.weight.shape == up.weight.shape == (1536, 576)


def test_arch_map_on_real_minilm(minilm):
    arch, cfg = minilm.arch, minilm.model.config
    assert (arch.family, arch.kind, minilm.kind) == ("bert", "encoder", "encoder")
    assert (arch.n_blocks(cfg), arch.hidden(cfg), arch.n_heads(cfg), arch.intermediate(cfg)) == (
        6,
        384,
        12,
        1536,
    )
    assert arch.post_norm and arch.lm_head is None


def test_unknown_architecture_names_supported_families():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "mamba"})()
            self.w = nn.Linear(2, 2)

    with pytest.raises(UnsupportedArchitectureError) as e:
        get_arch(Odd())
    assert "mamba" in e.value.problem and "llama" in e.value.problem
    assert "slimline/models/arch.py" in e.value.fix


def test_tiny_models_run_a_forward_pass():
    lm = tiny_model("llama")
    ids = torch.randint(0, 100, (1, 8))
    assert lm.model(ids).logits.shape == (1, 8, len(lm.tokenizer))
