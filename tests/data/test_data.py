import json

import pytest
import torch

from slimline.data import (
    calibration_blocks,
    eval_blocks,
    load_text,
    pack,
    sentences,
    text_part,
    token_ids,
    train_blocks,
)
from slimline.errors import DataError


@pytest.fixture(scope="module")
def tok():
    from slimline.models.tiny import _tokenizer

    return _tokenizer("causal-lm")


def test_python_docs_is_the_stdlib_topics_in_sorted_order():
    from pydoc_data.topics import topics

    text = load_text("python-docs")
    first = sorted(topics)[0]
    assert text.startswith(topics[first]) and len(text) > 400_000


def test_fit_and_eval_parts_partition_the_text():
    text = load_text("python-docs")
    assert text_part("python-docs", "fit") + text_part("python-docs", "eval") == text


def test_shakespeare_eval_is_hamlet_and_fit_excludes_it():
    ev, fit = text_part("shakespeare", "eval"), text_part("shakespeare", "fit")
    assert ev.startswith("# Hamlet")
    assert "# Hamlet\n" not in fit and "# Macbeth" in fit


def _windows(blocks):
    return {tuple(b.tolist()) for b in blocks}


def test_calibration_is_seeded_and_deterministic(tok):
    a = calibration_blocks(tok, n=16, seq_len=128, seed=0)
    b = calibration_blocks(tok, n=16, seq_len=128, seed=0)
    c = calibration_blocks(tok, n=16, seq_len=128, seed=1)
    assert a.shape == (16, 128) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mixed_calibration_draws_from_each_source(tok):
    mixed = calibration_blocks(tok, "python-docs+shakespeare", n=5, seq_len=64, seed=0)
    docs = calibration_blocks(tok, "python-docs", n=3, seq_len=64, seed=0)
    plays = calibration_blocks(tok, "shakespeare", n=2, seq_len=64, seed=1)
    assert mixed.shape == (5, 64)
    assert torch.equal(mixed, torch.cat([docs, plays]))


def test_train_calibration_and_eval_never_share_a_token_position(tok):
    seq = 128
    fit = token_ids(tok, "python-docs", "fit")
    calib = calibration_blocks(tok, n=32, seq_len=seq, seed=3)
    train = train_blocks(tok, seq_len=seq, seed=3, exclude_calib=32, calib_seq_len=seq)
    # Recover positions: calibration windows and train blocks both index into the fit part.
    from slimline.data.blocks import _calib_starts

    calib_pos = set()
    for s in _calib_starts(fit.numel(), 32, seq, 3).tolist():
        calib_pos.update(range(s, s + seq))
    all_blocks = pack(fit, seq)
    train_pos = set()
    rows = {tuple(r.tolist()): i for i, r in enumerate(all_blocks)}
    for r in train:
        i = rows[tuple(r.tolist())]
        train_pos.update(range(i * seq, (i + 1) * seq))
    assert calib_pos and train_pos and not (calib_pos & train_pos)
    assert torch.equal(
        calib,
        torch.stack([fit[s : s + seq] for s in _calib_starts(fit.numel(), 32, seq, 3).tolist()]),
    )
    # eval comes from the other half of the text
    ev = eval_blocks(tok, seq_len=seq, max_blocks=8)
    ev_text = tok.decode(ev[0])
    assert ev_text[:200] in text_part("python-docs", "eval")


def test_eval_blocks_are_the_first_non_overlapping_windows(tok):
    ev = eval_blocks(tok, "python-docs", seq_len=64, max_blocks=5)
    ids = token_ids(tok, "python-docs", "eval")
    assert torch.equal(ev.flatten(), ids[: 5 * 64])


def test_local_txt_and_jsonl_sources(tmp_path, tok):
    t = tmp_path / "a.txt"
    t.write_text("hello world. " * 400)
    assert eval_blocks(tok, str(t), seq_len=32, max_blocks=2).shape == (2, 32)
    j = tmp_path / "a.jsonl"
    j.write_text("\n".join(json.dumps({"body": f"line {i} of text " * 20}) for i in range(50)))
    assert "line 3 of text" in load_text(str(j), field="body")
    with pytest.raises(DataError) as e:
        load_text(str(j), field="text")
    assert "no field 'text'" in e.value.problem and "field=" in e.value.fix


def test_hf_dataset_saved_to_disk(tmp_path, tok):
    import datasets

    ds = datasets.Dataset.from_dict({"text": [f"paragraph number {i} " * 30 for i in range(40)]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert "paragraph number 7" in load_text(str(tmp_path / "ds"))
    assert calibration_blocks(tok, str(tmp_path / "ds"), n=4, seq_len=32).shape == (4, 32)


def test_empty_short_and_binary_inputs_are_clear_errors(tmp_path, tok):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(DataError, match="empty"):
        load_text(str(empty))
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    with pytest.raises(DataError) as e:
        eval_blocks(tok, str(short), seq_len=512)
    assert "fewer than one window of 512" in e.value.problem
    with pytest.raises(DataError):
        calibration_blocks(tok, str(short), n=4, seq_len=512)
    binary = tmp_path / "x.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(DataError, match="not a text file"):
        load_text(str(binary))
    with pytest.raises(DataError, match="not found"):
        load_text(str(tmp_path / "missing.txt"))


def test_sentences_for_encoders():
    s = sentences("python-docs", n=20)
    assert len(s) == 20 and all(40 <= len(x) <= 600 for x in s)
    assert not set(s) & set(sentences("python-docs", split="fit", n=500))
