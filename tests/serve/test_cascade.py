import copy
import json

import pytest
import torch

from slimline.errors import ConfigError
from slimline.models import LoadedModel, tiny_model
from slimline.serve import Cascade, CascadeConfig, confidence


@pytest.fixture(scope="module")
def pair(smollm2_2blocks):
    """A 'large' model (2 real SmolLM2 blocks) and a damaged 'small' copy of it."""
    large = smollm2_2blocks
    small_model = copy.deepcopy(large.model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in small_model.model.layers[1].parameters():
            p.add_(0.05 * torch.randn_like(p))
    small = LoadedModel(small_model, large.tokenizer, large.arch, "causal-lm", "damaged")
    return small, large


def _greedy(lm, prompt, n):
    """Plain greedy decoding of ``n`` tokens, cut after the first EOS (where a cascade stops)."""
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=n, do_sample=False)
    toks = out[0, ids.shape[1] :].tolist()
    eos = lm.tokenizer.eos_token_id
    return toks[: toks.index(eos) + 1] if eos in toks else toks


PROMPT = "The for statement in Python"


def test_threshold_zero_never_falls_back(pair):
    small, large = pair
    res = Cascade(small, large, CascadeConfig(threshold=0.0, max_new_tokens=8)).generate(PROMPT)
    assert res.fallback_rate == 0.0
    assert len(res.tokens) > 0 and res.tokens == _greedy(small, PROMPT, 8)


def test_threshold_one_always_takes_the_large_models_tokens(pair):
    small, large = pair
    res = Cascade(small, large, CascadeConfig(threshold=1.0, max_new_tokens=8)).generate(PROMPT)
    assert res.fallback_rate == 1.0
    assert len(res.tokens) > 0 and res.tokens == _greedy(large, PROMPT, 8)


def test_decisions_are_logged_with_confidence(pair, tmp_path):
    small, large = pair
    log = tmp_path / "cascade.jsonl"
    casc = Cascade(small, large, CascadeConfig(threshold=0.3, max_new_tokens=10), log_path=log)
    res = casc.generate(PROMPT)
    row = json.loads(log.read_text().splitlines()[-1])
    assert row["prompt"] == PROMPT and len(row["decisions"]) == len(res.tokens)
    for d in row["decisions"]:
        assert (d["source"] == "large") == (d["confidence"] < 0.3)


def test_sequence_level_regenerates_when_mean_confidence_is_low(pair):
    small, large = pair
    hi = Cascade(
        small, large, CascadeConfig(threshold=1.0, granularity="sequence", max_new_tokens=6)
    ).generate(PROMPT)
    lo = Cascade(
        small, large, CascadeConfig(threshold=0.0, granularity="sequence", max_new_tokens=6)
    ).generate(PROMPT)
    assert (
        hi.decisions[0].source == "large"
        and len(hi.tokens) > 0
        and hi.tokens == _greedy(large, PROMPT, 6)
    )
    assert lo.decisions[0].source == "small"


def test_confidence_scores():
    peaked = torch.tensor([10.0, 0.0, 0.0, 0.0])
    flat = torch.zeros(4)
    for kind in ("max_prob", "margin", "entropy"):
        assert confidence(peaked, kind) > confidence(flat, kind)
    assert confidence(flat, "entropy") == pytest.approx(0.0, abs=1e-6)


def test_mismatched_tokenizers_are_refused(pair):
    _, large = pair
    enc = tiny_model("bert")
    with pytest.raises(ConfigError):
        Cascade(enc, large)
