"""evaluate(): perplexity equals transformers' own loss, reference comparisons, encoders, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from slimline.data import eval_blocks
from slimline.errors import ConfigError, DataError
from slimline.eval import evaluate, hf_perplexity
from slimline.models import tiny_model


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _perturbed(lm, scale: float = 0.05, seed: int = 1):
    other = copy.deepcopy(lm)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in other.arch.blocks(other.model):
            for p in block.parameters():
                if p.dim() == 2:
                    p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))
    return other


def test_ppl_equals_hf_loss_tiny(llama) -> None:
    m = evaluate(llama, data=["python-docs"], windows=4, seq_len=64, suite="ppl")
    blocks = eval_blocks(llama.tokenizer, "python-docs", seq_len=64, max_blocks=4)
    hf = hf_perplexity(llama.model, blocks)
    # Measured: 48637.4506 vs 48637.4489 (relative 3e-8).
    assert m["ppl/python-docs"] == pytest.approx(hf, rel=1e-4)
    assert set(m) == {"ppl/python-docs", "bpb/python-docs"}


def test_ppl_equals_hf_loss_real_weights(smollm2_2blocks) -> None:
    lm = smollm2_2blocks
    m = evaluate(lm, data=["python-docs"], windows=2, seq_len=128, suite="ppl")
    hf = hf_perplexity(
        lm.model, eval_blocks(lm.tokenizer, "python-docs", seq_len=128, max_blocks=2)
    )
    # Two of 30 blocks feed a head trained on block 30's output: perplexity is huge (measured
    # ~3.8e7) but must still be exactly what transformers computes.
    assert m["ppl/python-docs"] == pytest.approx(hf, rel=1e-4)
    assert math.isfinite(m["ppl/python-docs"])


def test_bpb_is_nll_bits_over_utf8_bytes(llama) -> None:
    blocks = eval_blocks(llama.tokenizer, "python-docs", seq_len=64, max_blocks=3)
    m = evaluate(llama, data={"custom": blocks}, windows=3, suite="ppl")
    n_tok = blocks[:, 1:].numel()
    n_bytes = sum(len(llama.tokenizer.decode(r[1:].tolist()).encode()) for r in blocks)
    assert m["bpb/custom"] == pytest.approx(
        math.log(m["ppl/custom"]) * n_tok / math.log(2) / n_bytes
    )


def test_reference_self_is_perfect_and_perturbed_is_not(llama) -> None:
    same = evaluate(llama, reference=llama, windows=2, seq_len=64)
    assert same["kl/teacher"] == pytest.approx(0.0, abs=1e-6)
    assert same["agree/top1"] == 1.0
    assert 0 <= same["ece"] <= 1
    other = _perturbed(llama, scale=2.0)
    diff = evaluate(other, reference=llama, windows=2, seq_len=64)
    assert diff["kl/teacher"] > 1e-3  # measured 0.0173 nats/token
    assert diff["agree/top1"] < 0.5  # measured 0.008 (a random model's near-ties flip)
    assert diff["ppl/python-docs"] != same["ppl/python-docs"]


def test_two_datasets_give_per_dataset_and_pooled(llama) -> None:
    m = evaluate(llama, data=["python-docs", "shakespeare"], reference=llama, windows=1, seq_len=64)
    for k in (
        "ppl/python-docs",
        "ppl/shakespeare",
        "bpb/shakespeare",
        "ece/python-docs",
        "ece",
        "kl/teacher",
        "agree/top1",
        "kl/teacher/shakespeare",
        "agree/top1/python-docs",
    ):
        assert k in m, k


def test_encoder_self_and_noisy(minilm) -> None:
    same = evaluate(minilm, reference=minilm, n_sentences=16, seq_len=64)
    assert same["cos/teacher"] == pytest.approx(1.0, abs=1e-5)
    assert same["recall@10/teacher"] == 1.0
    noisy = _perturbed(minilm, scale=0.2)  # noise at 20 % of each matrix's mean |weight|
    m = evaluate(noisy, reference=minilm, n_sentences=16, seq_len=64)
    assert m["cos/teacher"] < 0.99  # measured 0.873
    assert m["recall@10/teacher"] < 1.0  # measured 0.838
    with pytest.raises(ConfigError, match="reference"):
        evaluate(minilm)


def test_bad_input(llama, tmp_path) -> None:
    with pytest.raises(ConfigError, match="windows must be at least 1"):
        evaluate(llama, windows=0)
    with pytest.raises(ConfigError, match="unknown evaluation suite"):
        evaluate(llama, suite="everything")
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(DataError, match="empty"):
        evaluate(llama, data=[str(empty)])
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x + 1\n" * 20)
    # The eval half of this file is ~120 tokens: fewer than one 512-token window; the error says so.
    with pytest.raises(DataError, match=r"has \d+ tokens, fewer than one window of 512"):
        evaluate(llama, data=[str(short)], seq_len=512)
    with pytest.raises(DataError, match="shape"):
        evaluate(llama, data={"x": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(ConfigError, match="same kind"):
        evaluate(llama, reference=tiny_model("bert"))
