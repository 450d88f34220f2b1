"""Teachers: ensemble weighting and normalisation, tokenizer checks, cached top-k outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimline.distill import CachedTeacher, Teacher, cache_teacher, fit_temperature, same_tokenizer
from slimline.distill.losses import soft_kl, topk_kl
from slimline.errors import ConfigError, TrainingError
from slimline.models import tiny_model


@pytest.fixture(scope="module")
def pair():
    return tiny_model("llama", seed=0), tiny_model("llama", seed=1)


def test_ensemble_weighting(pair):
    a, b = pair
    ids = torch.randint(0, 1000, (2, 8))
    with torch.no_grad():
        za, zb = a.model(ids).logits, b.model(ids).logits
    only_a = Teacher([a, b], weights=[1.0, 0.0])(ids).logits
    assert torch.allclose(F.log_softmax(only_a, -1), F.log_softmax(za, -1), atol=1e-5)
    mix = Teacher([a, b], weights=[3.0, 1.0])(ids).logits
    expected = 0.75 * F.softmax(za, -1) + 0.25 * F.softmax(zb, -1)
    assert torch.allclose(mix.exp(), expected, atol=1e-6)
    assert torch.allclose(mix.exp().sum(-1), torch.ones(2, 8), atol=1e-5)  # a distribution


def test_ensemble_normalises_each_teacher_by_its_temperature(pair):
    a, _ = pair
    ids = torch.randint(0, 1000, (1, 8))

    class Sharp(torch.nn.Module):  # the same teacher with 5x the logit scale
        def __init__(self, m):
            super().__init__()
            self.m, self.config = m, m.config

        def forward(self, **kw):
            out = self.m(**kw)
            out.logits = out.logits * 5
            return out

    sharp = Sharp(a.model)
    raw = Teacher([a.model, sharp], weights=[0.5, 0.5])(ids).logits
    norm = Teacher([a.model, sharp], weights=[0.5, 0.5], temperatures=[1.0, 5.0])(ids).logits
    with torch.no_grad():
        ref = F.log_softmax(a.model(ids).logits, -1)
    # normalised, both members are the same distribution, so the mixture equals it
    assert torch.allclose(norm, ref, atol=1e-5)
    assert (raw - ref).abs().max() > 1e-3  # unnormalised, the sharp one distorts the mixture


def test_fit_temperature_recovers_a_known_scale():
    # Tokens drawn from softmax(z); a teacher that says 2z is over-confident by exactly T = 2.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 200, 20, generator=g) * 2
    nxt = torch.multinomial(F.softmax(z[:, :-1], -1).reshape(-1, 20), 1, generator=g).view(8, 199)
    ids = torch.cat([torch.zeros(8, 1, dtype=torch.long), nxt], 1)

    class Fixed(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, input_ids, **_):
            return type("Out", (), {"logits": z * self.scale})()

    assert fit_temperature(Fixed(2.0), ids) == pytest.approx(2.0, abs=0.15)  # measured 2.0
    assert fit_temperature(Fixed(1.0), ids) == pytest.approx(1.0, abs=0.1)  # measured 1.0


def test_bad_ensemble_inputs(pair):
    a, b = pair
    with pytest.raises(ConfigError):
        Teacher([a, b], weights=[1.0])
    with pytest.raises(ConfigError):
        Teacher([a, b], weights=[0.0, 0.0])
    with pytest.raises(ConfigError):
        Teacher([a], temperatures="auto")
    with pytest.raises(ConfigError):
        Teacher([])


def test_same_tokenizer():
    llama, bert = tiny_model("llama"), tiny_model("bert")
    assert same_tokenizer(llama.tokenizer, tiny_model("qwen2").tokenizer)
    assert not same_tokenizer(llama.tokenizer, bert.tokenizer)


def test_cached_teacher_roundtrip(pair, tmp_path):
    a, _ = pair
    ids = torch.randint(0, 1000, (3, 8))
    path = cache_teacher(
        a, ids, tmp_path / "cache.safetensors", k=a.model.config.vocab_size, batch_size=2
    )
    ct = CachedTeacher(path, ids)
    out = ct(ids[1:3], indices=torch.tensor([1, 2]))
    with torch.no_grad():
        z = a.model(ids[1:3]).logits
    s = torch.randn_like(z)
    # with k = vocab the cached loss equals the live one
    assert topk_kl(s, out.topk_index, out.topk_logits, 2.0).item() == pytest.approx(
        soft_kl(s, z, 2.0).item(), rel=1e-4
    )
    small = CachedTeacher(cache_teacher(a, ids, tmp_path / "k8.safetensors", k=8), ids)
    assert small.index.shape == (3, 8, 8)
    with pytest.raises(TrainingError, match="other data"):
        CachedTeacher(path, torch.randint(0, 1000, (3, 8)))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="teacher cache"):
        CachedTeacher(tmp_path / "bad.safetensors")
