"""Issue 16, item 9: calibration that asks for more windows than its text holds is refused past
a stated reuse (8 uses per token on average) and warned about past 2, with the numbers."""

from __future__ import annotations

import warnings

import pytest
from hostile_util import tree


@pytest.fixture
def small_text(tmp_path):
    f = tmp_path / "small.txt"
    f.write_text("hello world, this is a small corpus. " * 150)  # ~600 fit tokens
    return f


def test_calibration_reusing_each_token_many_times_is_refused(
    cli, tiny_llama_dir, tmp_path, small_text
):
    before = tree(tmp_path)
    res = cli(
        "prune", tiny_llama_dir, "-o", tmp_path / "out", "--method", "wanda", "--sparsity", "0.5",
        "--calib", small_text, "--calib-samples", "128", "--seq-len", "64",
    )  # fmt: skip
    assert res.code == 2, res.err
    line = res.error_line()
    assert "128 calibration windows of 64 tokens (8,192 tokens)" in line
    assert "each token would be used ~" in line and "at most 8 allowed" in line
    assert "--calib-samples" in res.err
    assert tree(tmp_path) == before


def test_moderate_reuse_warns_with_the_numbers_and_little_reuse_is_silent(small_text):
    from slimline.data import calibration_blocks, token_ids
    from slimline.models import tiny_model

    tok = tiny_model("llama").tokenizer
    n_tokens = token_ids(tok, str(small_text)).numel()
    n = int(4 * n_tokens / 64)  # ~4 uses per token
    with pytest.warns(
        UserWarning, match=rf"{n} calibration windows of 64 tokens .* used ~4\.0 times"
    ):
        assert calibration_blocks(tok, str(small_text), n=n, seq_len=64).shape == (n, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibration_blocks(tok, str(small_text), n=n_tokens // 64, seq_len=64)  # ~1 use per token
