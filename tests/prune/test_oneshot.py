"""One-shot techniques on tiny real-architecture models: sparsity, patterns, selection, errors."""

from __future__ import annotations

import pytest
import torch

from slimline.core import make_config
from slimline.errors import ConfigError, DataError
from slimline.models import tiny_model
from slimline.prune import Magnitude, SparseGpt, Wanda, is_nm, prune


def _ids(n=4, t=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 49152, (n, t), generator=g)


def _block_linears(model):
    return {
        n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n
    }


@pytest.mark.parametrize(
    "cfg", [Magnitude(sparsity=0.5), Wanda(sparsity=0.5), SparseGpt(sparsity=0.5)]
)
def test_oneshot_methods_reach_exact_sparsity_on_every_block_linear(cfg):
    lm = tiny_model("llama")
    rec = prune(lm, cfg, data=_ids())
    for name, m in _block_linears(lm.model).items():
        assert float((m.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-9), name
    assert rec["sparsity"] == pytest.approx(0.5)
    assert rec["kind"] == cfg.kind
    # lm_head and the tied embedding are untouched
    assert float((lm.model.lm_head.weight == 0).float().mean()) < 0.01


@pytest.mark.parametrize("cls", [Magnitude, Wanda, SparseGpt])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_oneshot_methods_produce_nm_patterns(cls, pattern):
    lm = tiny_model("llama")
    prune(lm, cls(pattern=pattern), data=_ids())
    n, m = map(int, pattern.split(":"))
    for name, lin in _block_linears(lm.model).items():
        assert is_nm(lin.weight, n, m), name
        assert float((lin.weight == 0).float().mean()) == pytest.approx(1 - n / m)


def test_ignore_lm_head_protects_a_tied_embedding():
    # llm-compressor pruned the tied embedding through lm_head (PEERS.md); we must not.
    lm = tiny_model("llama")
    assert lm.arch.tied(lm.model)
    emb = lm.model.model.embed_tokens.weight.detach().clone()
    rec = prune(lm, Magnitude(sparsity=0.5, targets=["re:.*"], ignore=["lm_head"]))
    assert torch.equal(lm.model.model.embed_tokens.weight, emb)
    assert not any("embed" in n or "lm_head" in n for n in rec["layers"])
    assert any("mlp" in n for n in rec["layers"])


def test_without_ignore_the_tied_pair_is_pruned_once():
    lm = tiny_model("llama")
    rec = prune(lm, Magnitude(sparsity=0.5, targets=["re:.*embed_tokens|.*lm_head"], ignore=[]))
    assert len(rec["layers"]) == 1  # one weight under two names is one layer
    assert float((lm.model.lm_head.weight == 0).float().mean()) == pytest.approx(0.5)


def test_targets_restrict_pruning_to_matching_layers():
    lm = tiny_model("llama")
    rec = prune(lm, Wanda(sparsity=0.5, targets=["re:.*mlp.*"]), data=_ids())
    assert set(rec["layers"]) == {n for n in _block_linears(lm.model) if ".mlp." in n}
    assert (lm.model.model.layers[0].self_attn.q_proj.weight != 0).all()


def test_per_layer_sparsity_is_honoured():
    lm = tiny_model("llama")
    name = "model.layers.0.mlp.down_proj"
    prune(lm, Magnitude(sparsity=0.5, sparsity_per_layer={name: 0.25}))
    w = lm.model.get_submodule(name).weight
    assert float((w == 0).float().mean()) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "params",
    [{"sparsity": 1.0}, {"sparsity": -0.2}, {"pattern": "4:2"}, {"pattern": "2:2"}, {"bogus": 1}],
)
def test_bad_configs_raise_config_error(params):
    with pytest.raises(ConfigError):
        Wanda(**params)
    with pytest.raises(ConfigError):
        make_config("prune.sparsegpt", params)


def test_nm_on_a_width_not_divisible_by_m_leaves_the_model_untouched():
    lm = tiny_model("llama", hidden=60, n_heads=2, n_kv_heads=2, intermediate=120)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with pytest.raises(ConfigError, match="not divisible by M=8"):
        prune(lm, Magnitude(pattern="4:8"))
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_no_matching_layer_and_missing_data_are_clear_errors():
    lm = tiny_model("llama")
    with pytest.raises(ConfigError, match="match no layer"):
        prune(lm, Magnitude(targets=["re:nothing.*"]))
    lm.tokenizer = None
    with pytest.raises(DataError, match="calibration data"):
        prune(lm.model, Wanda())


def test_config_round_trips_through_json():
    cfg = SparseGpt(pattern="2:4", ignore=["lm_head", "re:.*down_proj"])
    again = make_config(
        "prune.sparsegpt", {k: v for k, v in cfg.to_dict().items() if k not in ("kind", "version")}
    )
    assert again == cfg
