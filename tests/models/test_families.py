"""Discovery of decoder layouts (Gemma 3, Qwen 3, Phi-3, llama-likes, an unseen class), the
capability table, and every capability on tiny random models of the new families."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from slimline.errors import UnsupportedArchitectureError
from slimline.models import discover as disc
from slimline.models import get_arch, load_model, tiny_model

NEW = ("qwen3", "gemma3_text", "phi3")

# the hand-written llama entry that discovery replaced: it must come out the same
LLAMA_ROLES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "mlp_in": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp_out": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
}


def _ids(n=4, t=128, seed=0):
    return torch.randint(0, 2000, (n, t), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_discovery_reproduces_the_former_llama_table(family):
    arch = tiny_model(family).arch
    assert (arch.family, arch.source, arch.block_path) == ("llama", "discovered", "model.layers")
    assert arch.roles == LLAMA_ROLES
    assert (arch.embed, arch.final_norm, arch.lm_head) == (
        "model.embed_tokens",
        "model.norm",
        "lm_head",
    )
    assert arch.norm_offset == 0.0 and arch.mlp_glu and not arch.mlp_fused


def test_discovery_describes_gemma3_qwen3_phi3():
    g = tiny_model("gemma3_text").arch
    assert g.family == "gemma3_text" and g.source == "discovered"
    assert g.roles["attn_norm"] == "input_layernorm"
    assert g.roles["attn_post_norm"] == "post_attention_layernorm"  # not the MLP's pre-norm
    assert g.roles["mlp_norm"] == "pre_feedforward_layernorm"
    assert g.roles["mlp_post_norm"] == "post_feedforward_layernorm"
    assert (g.roles["q_norm"], g.roles["k_norm"]) == ("self_attn.q_norm", "self_attn.k_norm")
    assert g.norm_offset == 1.0  # x * (1 + w)
    assert g.notes["embed_scale"] == pytest.approx(64**0.5)
    assert g.notes["attn_logit_softcapping"] == 50.0 and g.notes["sliding_window"] == 8
    cfg = tiny_model("gemma3_text").model.config
    assert [g.sliding_window(cfg, i) for i in range(2)] == [8, None]

    q = tiny_model("qwen3").arch
    assert q.roles["q_norm"] == "self_attn.q_norm" and q.norm_offset == 0.0
    assert {k: v for k, v in q.roles.items() if k not in ("q_norm", "k_norm")} == LLAMA_ROLES

    p = tiny_model("phi3", hidden=64, n_heads=4, n_kv_heads=2)
    a, c = p.arch, p.model.config
    assert a.roles["qkv"] == "self_attn.qkv_proj" and "q" not in a.roles
    assert a.roles["mlp_in"] == ("mlp.gate_up_proj",) and a.mlp_fused and a.mlp_glu
    assert a.qkv_rows(c) == (slice(0, 64), slice(64, 96), slice(96, 128))
    assert a.up_rows(c) == slice(128, 256)


def test_discovery_is_cached_per_class(monkeypatch):
    lm = tiny_model("qwen3")
    calls = []
    monkeypatch.setattr(disc, "_discover", lambda m: calls.append(m) or None)
    assert get_arch(tiny_model("qwen3").model).roles == lm.arch.roles
    assert calls == []  # the second model of the class reused the first description


# --- a decoder class discovery has never seen ---------------------------------------------------


class _Cfg:
    model_type = "toy-decoder"
    is_encoder_decoder = False

    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Norm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class _Block(nn.Module):
    """Unusual names; the MLP defines (and calls) "up" (w3) before "gate" (w1)."""

    def __init__(self, c, parallel=False):
        super().__init__()
        self.parallel, self.h, self.d = parallel, c.n_heads, c.dim // c.n_heads
        self.ln_a, self.ln_m = _Norm(c.dim), _Norm(c.dim)
        self.attn = nn.ModuleDict(
            {n: nn.Linear(c.dim, c.dim, bias=False) for n in ("wq", "wk", "wv", "wo")}
        )
        self.ffn = nn.ModuleDict(
            {
                "w3": nn.Linear(c.dim, c.ffn_dim, bias=False),
                "w1": nn.Linear(c.dim, c.ffn_dim, bias=False),
                "w2": nn.Linear(c.ffn_dim, c.dim, bias=False),
            }
        )

    def _attn(self, x):
        B, T, C = x.shape
        q, k, v = (
            self.attn[n](x).view(B, T, self.h, self.d).transpose(1, 2) for n in ("wq", "wk", "wv")
        )
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.attn["wo"](y.transpose(1, 2).reshape(B, T, C))

    def _mlp(self, x):
        up = self.ffn["w3"](x)
        return self.ffn["w2"](nn.functional.silu(self.ffn["w1"](x)) * up)

    def forward(self, x, **_):
        if self.parallel:  # GPT-J style: both branches read one norm
            h = self.ln_a(x)
            return x + self._attn(h) + self._mlp(h)
        x = x + self._attn(self.ln_a(x))
        return x + self._mlp(self.ln_m(x))


class _Toy(nn.Module):
    def __init__(self, parallel=False):
        super().__init__()
        self.config = _Cfg(n_layers=2, n_heads=4, dim=32, ffn_dim=48)
        self.tok = nn.Embedding(100, 32)
        self.stack = nn.ModuleList([_Block(self.config, parallel) for _ in range(2)])
        self.final = _Norm(32)
        self.head = nn.Linear(32, 100, bias=False)

    def get_input_embeddings(self):
        return self.tok

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, **_):
        x = self.tok(input_ids)
        for b in self.stack:
            x = b(x)
        return self.head(self.final(x))


def test_an_unseen_decoder_class_is_described_and_pruned():
    torch.manual_seed(0)
    model = _Toy()
    arch = get_arch(model)
    assert (arch.family, arch.source, arch.block_path) == ("toy-decoder", "discovered", "stack")
    assert [arch.roles[r] for r in ("q", "k", "v", "o")] == [
        "attn.wq",
        "attn.wk",
        "attn.wv",
        "attn.wo",
    ]
    # gate (the one under the activation) first, though w3 is defined and called first
    assert arch.roles["mlp_in"] == ("ffn.w1", "ffn.w3") and arch.roles["mlp_out"] == "ffn.w2"
    assert (arch.roles["attn_norm"], arch.roles["mlp_norm"]) == ("ln_a", "ln_m")
    assert (arch.embed, arch.final_norm, arch.lm_head) == ("tok", "final", "head")
    assert (
        arch.n_heads(model.config),
        arch.head_dim(model.config),
        arch.intermediate(model.config),
    ) == (4, 8, 48)
    # a capability on it: MLP channel removal equals zeroing the same channels
    from slimline.prune import remove_mlp_channels

    ids = torch.randint(0, 100, (2, 10))
    masked = copy.deepcopy(model)
    plan = {0: [0, 5, 7], 1: [1, 2, 47]}
    with torch.no_grad():
        for b, cs in plan.items():
            masked.stack[b].ffn["w2"].weight[:, cs] = 0
        remove_mlp_channels(model, plan)
        assert model.stack[0].ffn["w1"].weight.shape == (45, 32)
        assert torch.allclose(model(ids), masked(ids), atol=1e-5)
    assert model.config.ffn_dim == 45


class _ParallelToy(_Toy):
    def __init__(self):
        super().__init__(parallel=True)


def test_an_unseen_parallel_block_is_refused_with_the_reason():
    with pytest.raises(UnsupportedArchitectureError) as e:
        get_arch(_ParallelToy())
    assert "no norm runs before the attention and before the MLP" in e.value.problem
    assert "FAMILIES" in e.value.fix


# --- the capability table ---------------------------------------------------------------------


def test_capability_table_comes_from_the_guards(monkeypatch):
    from slimline.models import families
    from slimline.prune import structured

    table = {r.model_type: r for r in families.family_table()}
    assert set(NEW) <= set(table)
    ok = {m: {k: v[0] for k, v in r.capabilities.items()} for m, r in table.items()}
    assert ok["phi3"]["prune.heads"] and ok["phi3"]["prune.mlp"]
    assert not ok["gpt2"]["prune.heads"] and not ok["bert"]["smoothquant"]
    assert [m for m in ok if ok[m]["gguf"]] == [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma3_text",
        "phi3",
    ]
    assert table["gemma3_text"].capabilities["gguf"][1] == "llama.cpp arch gemma3"
    assert "not gpt2" in table["gpt2"].capabilities["gguf"][1]
    assert (
        "fused qkv" in table["phi3"].specifics and "(1+w) RMSNorm" in table["gemma3_text"].specifics
    )

    def refuse(arch):
        raise UnsupportedArchitectureError(f"no heads for {arch.model_type}", "none")

    monkeypatch.setattr(structured, "check_head_pruning", refuse)
    assert not families.report(tiny_model("qwen3").model).capabilities["prune.heads"][0]


def test_models_families_cli_json():
    from typer.testing import CliRunner

    from slimline.cli import app

    res = CliRunner().invoke(app, ["models", "families", "--json"])
    assert res.exit_code == 0, res.output
    fams = {f["model_type"]: f for f in json.loads(res.output)["families"]}
    assert fams["gemma3_text"]["source"] == "discovered" and fams["bert"]["source"] == "table"
    assert fams["qwen3"]["capabilities"]["rtn/gptq"]["supported"]


# --- every capability on the new families -------------------------------------------------------


@pytest.mark.parametrize("family", NEW)
def test_one_shot_methods_run_on_new_families(family):
    from slimline.prune import SparseGpt, Wanda, prune
    from slimline.quant import Awq, Gptq, Rtn, quantize

    base = tiny_model(family, n_blocks=2, hidden=64)
    ids, ev = _ids(), _ids(2, 32, seed=1)
    ref = _logits(base.model, ev)
    from slimline.quant.linear import QuantLinear

    per_block = 4 if family == "phi3" else 7  # fused qkv + o + gate_up + down
    for cfg in (
        Rtn(bits=8, group_size=32),
        Gptq(bits=8, group_size=32),
        Awq(bits=8, group_size=32, n_grid=4),
    ):
        m = copy.deepcopy(base.model)
        quantize(m, cfg, data=ids)
        assert sum(isinstance(x, QuantLinear) for x in m.modules()) == 2 * per_block
        err = (_logits(m, ev) - ref).norm() / ref.norm()
        assert err < 0.05, (type(cfg).__name__, float(err))  # 8-bit: measured 0.002-0.01
    for cfg in (Wanda(sparsity=0.5), SparseGpt(sparsity=0.5)):
        m = copy.deepcopy(base.model)
        prune(m, cfg, data=ids)
        lin = get_arch(m).linear(get_arch(m).blocks(m)[0], "o")
        assert (lin.weight == 0).float().mean() == pytest.approx(0.5, abs=0.02)
        assert torch.isfinite(_logits(m, ev)).all()


@pytest.mark.parametrize("family", NEW)
def test_smoothquant_is_an_identity_on_new_families(family):
    """Folding must respect Gemma's x * (1 + w) norms: dividing w alone changes the model."""
    from slimline.quant.smoothquant import smooth

    lm = tiny_model(family)
    ev = _ids(2, 32, seed=1)
    with torch.no_grad():  # give the norms non-trivial weights so a wrong fold shows
        for n, p in lm.model.named_parameters():
            if "norm" in n:
                p.add_(0.3 * torch.randn_like(p))
    ref = _logits(lm.model, ev)
    rec = smooth(lm.model, _ids(2, 32), alpha=0.5)
    assert rec["pairs"] == 4
    assert torch.allclose(_logits(lm.model, ev), ref, atol=1e-4, rtol=1e-4)


def test_gptq_treats_a_fused_qkv_like_its_parts():
    """GPTQ rows are independent under one input Hessian: quantizing Phi-3's fused qkv equals
    quantizing q, k and v separately (what a split would give)."""
    from slimline.quant.gptq import gptq_quantize
    from slimline.quant.grid import QuantScheme

    lm = tiny_model("phi3", hidden=64)
    arch, cfg = lm.arch, lm.model.config
    w = arch.linear(arch.blocks(lm.model)[0], "qkv").weight.detach()
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    h = x.T @ x / 256
    scheme = QuantScheme(bits=4, group_size=32)
    fused = gptq_quantize(w, h, scheme)
    parts = [gptq_quantize(w[rows], h, scheme) for rows in arch.qkv_rows(cfg)]
    for i in range(3):
        assert torch.equal(fused[i], torch.cat([p[i] for p in parts]))


@pytest.mark.parametrize("family", NEW)
def test_load_profile_student_distill_and_export_on_new_families(family, tmp_path):
    from slimline.distill import DistillConfig, distill
    from slimline.distill.student import drop_blocks, student_from_config
    from slimline.profile.static import flops_per_token

    lm = tiny_model(family, n_blocks=4)
    # loading: an HF directory through the normal loader, described the same way
    lm.model.save_pretrained(tmp_path / "hf")
    lm.tokenizer.save_pretrained(tmp_path / "hf")
    back = load_model(tmp_path / "hf")
    assert back.arch.roles == lm.arch.roles and back.arch.family == lm.arch.family
    ev = _ids(1, 16)
    assert torch.allclose(_logits(back.model, ev), _logits(lm.model, ev), atol=1e-5)
    # profiling: analytic FLOPs; Gemma's sliding layers cap decode attention at the window
    f = flops_per_token(lm.model, lm.arch, 64, mode="decode")
    assert f["total"] > f["linear"] > 0
    if family == "gemma3_text":
        full = 2 * 2 * 4 * 16 * 64  # per block: 2 FLOPs * (QK + AV) * heads * head_dim * keys
        assert f["attention"] == 2 * full + 2 * full * 8 / 64  # 2 global + 2 sliding (window 8)
    # students: layer dropping keeps Gemma's sliding/global pattern per kept block
    s = drop_blocks(lm, indices=[0, 3])
    assert s.arch.n_blocks(s.model.config) == 2
    types = getattr(lm.model.config, "layer_types", None)
    if types:
        assert s.model.config.layer_types == [types[0], types[3]]
    fresh = student_from_config(lm, {"num_hidden_layers": 2})
    if types:
        assert fresh.model.config.layer_types == [types[1], types[3]]
    # distillation: a couple of steps, finite loss
    res = distill(lm, s, _ids(4, 16), DistillConfig(max_steps=2, batch_size=2, seq_len=16))
    assert res.train.steps == 2
    # GGUF: written as llama.cpp's own architecture (verified in tests/export/test_gguf_families)
    from slimline.export.gguf_export import GGUF_ARCH, export_gguf

    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf", verify=False)
    assert res.record["architecture"] == GGUF_ARCH[family]


def test_a_quantized_artifact_of_a_new_family_is_rediscovered(tmp_path):
    """Discovery works on compressed modules (QuantLinear) in a fresh cache."""
    from slimline.artifact import save_artifact
    from slimline.quant import Rtn, quantize

    lm = tiny_model("phi3")
    quantize(lm.model, Rtn(bits=4, group_size=32))
    ev = _ids(1, 16)
    ref = _logits(lm.model, ev)
    save_artifact(lm.model, lm.tokenizer, tmp_path / "a")
    disc._CACHE.clear()
    back = load_model(tmp_path / "a")
    assert back.arch.roles == lm.arch.roles and back.arch.mlp_fused
    assert torch.allclose(_logits(back.model, ev), ref, atol=1e-5)
