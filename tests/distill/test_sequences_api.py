"""Sequence-level KD data, curriculum, the public verb, the recipe technique and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from slimline.core import Context, apply_technique, make_config
from slimline.distill import DistillConfig, distill, drop_blocks
from slimline.distill.curriculum import curriculum_order, curriculum_weights, difficulty
from slimline.distill.sequences import (
    SequenceFilter,
    generate_sequences,
    load_sequences,
    repetition_ratio,
)
from slimline.errors import ConfigError, DataError
from slimline.models import load_model, tiny_model


@pytest.fixture(scope="module")
def teacher():
    return tiny_model("llama", n_blocks=2, seed=0)


def test_repetition_ratio():
    assert repetition_ratio("one two three four five six") == 0.0
    assert repetition_ratio("a b c " * 10) > 0.8  # measured 0.893
    assert repetition_ratio("short") == 0.0


def test_generate_filter_save_and_train(teacher, tmp_path):
    path = tmp_path / "seq.jsonl"
    prompts = ["def f(x):", "The for statement", "class A:"]
    keep_all = SequenceFilter(min_tokens=1, max_repetition=1.0, min_confidence=0.0)
    prov = generate_sequences(teacher, prompts, path, max_new_tokens=12, filt=keep_all)
    assert prov["kept"] == 3 and prov["teacher"] == "tiny-llama"
    assert prov["generation"]["max_new_tokens"] == 12
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert all(r["text"].startswith(r["prompt"]) and "confidence" in r["stats"] for r in rows)
    meta = json.loads((tmp_path / "seq.jsonl.meta.json").read_text())
    assert meta["rejected"] == {"too_short": 0, "too_long": 0, "repetitive": 0, "unconfident": 0}
    # a random tiny model is never confident: the confidence filter rejects everything
    strict = SequenceFilter(min_tokens=1, max_repetition=1.0, min_confidence=0.9)
    prov2 = generate_sequences(
        teacher, prompts, tmp_path / "strict.jsonl", max_new_tokens=6, filt=strict
    )
    assert prov2["kept"] == 0 and prov2["rejected"]["unconfident"] == 3
    with pytest.raises(DataError, match="no sequences"):
        load_sequences(tmp_path / "strict.jsonl", teacher.tokenizer)
    data = load_sequences(path, teacher.tokenizer, seq_len=24)
    assert data["input_ids"].shape == (3, 24) and data["attention_mask"][:, 0].all()
    m = data["attention_mask"]  # right padding: ones then zeros
    assert torch.equal(m, m.sort(dim=1, descending=True, stable=True).values)
    s = drop_blocks(teacher, keep=1)
    res = distill(
        teacher,
        s,
        data,
        DistillConfig(losses={"ce": 1.0, "kl": 1.0}, max_steps=2, batch_size=2, seq_len=24),
    )
    assert res.train.steps == 2


def test_curriculum(teacher):
    ids = torch.randint(0, 1000, (6, 12))
    mask = torch.ones(6, 12, dtype=torch.long)
    mask[0, 4:] = 0
    mask[3, 8:] = 0
    by_len = difficulty(None, ids, mask, by="length")
    assert curriculum_order(by_len)[:2].tolist() == [0, 3]  # shortest first
    ent = difficulty(teacher.model, ids, mask, by="entropy")
    order = curriculum_order(ent)
    assert torch.all(ent[order][1:] >= ent[order][:-1])
    w0, w1 = curriculum_weights(ent, 0.0), curriculum_weights(ent, 1.0)
    assert w0[order[0]] == 1.0 and w0[order[-1]] == pytest.approx(0.1) and torch.all(w1 == 1)
    with pytest.raises(ConfigError):
        difficulty(None, ids, by="entropy")
    # the trainer follows the curriculum in the first epoch
    res = distill(
        teacher,
        drop_blocks(teacher, keep=1),
        ids,
        DistillConfig(max_steps=1, batch_size=2, seq_len=12, curriculum="length"),
    )
    assert res.train.steps == 1


def test_distill_verb_saves_student_and_log(teacher, tmp_path):
    res = distill(
        teacher,
        {"keep": 1, "importance": "even"},
        "python-docs",
        DistillConfig(max_steps=2, batch_size=2, seq_len=16),
        tmp_path / "out",
    )
    rec = json.loads((tmp_path / "out" / "distill.json").read_text())
    assert rec["steps"] == 2 and rec["student"]["kept_blocks"] == [1]
    back = load_model(tmp_path / "out" / "model")
    assert back.model.config.num_hidden_layers == 1
    ids = torch.randint(0, 1000, (1, 8))
    with torch.no_grad():
        assert torch.allclose(back.model(ids).logits, res.student.model(ids).logits, atol=1e-5)
    assert (tmp_path / "out" / "run" / "train_log.jsonl").exists()
    with pytest.raises(ConfigError):
        distill(teacher, {"keep": 1}, "python-docs", max_steps=-1)


def test_max_steps_zero_writes_the_cut_student(teacher, tmp_path):
    res = distill(
        teacher, {"drop_every": 2}, "python-docs", DistillConfig(max_steps=0, seq_len=16), tmp_path
    )
    assert res.train.steps == 0
    ids = torch.randint(0, 1000, (1, 8))
    cut = drop_blocks(teacher, drop_every=2)
    with torch.no_grad():
        assert torch.allclose(
            load_model(tmp_path / "model").model(ids).logits, cut.model(ids).logits, atol=1e-5
        )


def test_distill_technique_in_a_recipe_stage(teacher, tmp_path):
    cfg = make_config(
        "distill", {"max_steps": 2, "batch_size": 2, "losses": {"kl": 1.0, "hidden": 0.1}}
    )
    fields = {k: v for k, v in cfg.to_dict().items() if k not in ("kind", "version")}
    assert make_config("distill", json.loads(json.dumps(fields))) == cfg  # JSON round trip
    student = drop_blocks(teacher, keep=1).model
    ids = torch.randint(0, 1000, (8, 16))
    ctx = Context(tokenizer=teacher.tokenizer, train=ids, teacher=teacher.model, workdir=tmp_path)
    rec = apply_technique(student, cfg, ctx)
    assert rec["kind"] == "distill" and rec["steps"] == 2 and rec["last_loss"] is not None
    with pytest.raises(ConfigError, match="before the recipe"):
        apply_technique(drop_blocks(teacher, keep=1).model, cfg, Context(train=ids))


def test_cli_distill_and_resume(teacher, tmp_path, monkeypatch):
    from slimline.cli import app

    monkeypatch.setenv("SLIMLINE_HOME", str(tmp_path / "home"))  # the run dir and registry

    tdir = tmp_path / "teacher"
    teacher.model.save_pretrained(tdir, safe_serialization=True)
    teacher.tokenizer.save_pretrained(str(tdir))
    runner = CliRunner()
    base = [
        "distill",
        "--teacher",
        str(tdir),
        "--student-from",
        f"{tdir}:keep=1",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "-o",
        str(tmp_path / "out"),
        "--json",
    ]
    r = runner.invoke(app, [*base, "--max-steps", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("{") :])["steps"] == 2
    r2 = runner.invoke(app, [*base, "--max-steps", "3", "--resume"])
    assert r2.exit_code == 0, r2.output
    rec = json.loads(r2.output[r2.output.index("{") :])
    assert rec["steps"] == 3 and rec["resumed_from"] == 2
    bad = runner.invoke(
        app,
        [
            "distill",
            "--teacher",
            str(tdir),
            "--student-from",
            "other:keep=1",
            "-o",
            str(tmp_path / "x"),
        ],
    )
    assert bad.exit_code != 0


def test_cached_teacher_in_the_loop_matches_the_live_one(teacher, tmp_path):
    ids = torch.randint(0, 1000, (4, 12))
    cfg = DistillConfig(max_steps=2, batch_size=2, seq_len=12, temperature=1.0)
    live = distill(teacher, {"keep": 1}, ids, cfg)
    k_all = teacher.model.config.vocab_size
    cached = distill(
        teacher, {"keep": 1}, ids, cfg.model_copy(update={"cache_topk": k_all}), tmp_path
    )
    assert (tmp_path / "teacher_topk.safetensors").exists()
    assert cached.train.losses == pytest.approx(live.train.losses, rel=1e-4)  # k = vocab: exact
    with pytest.raises(ConfigError, match="cached teacher"):
        distill(
            teacher,
            {"keep": 1},
            ids,
            cfg.model_copy(update={"cache_topk": 8, "losses": {"kl": 1.0, "hidden": 1.0}}),
            tmp_path / "h",
        )
