"""The loop: KD lowers the divergence, resume reproduces the uninterrupted run, bad runs stop
with a clear error, in-loop pruning masks hold, encoders distil too."""

from __future__ import annotations

import json

import pytest
import torch

from slimline.core import make_config
from slimline.distill import (
    DistillConfig,
    GradualPruning,
    LoopHook,
    QuantAwareTraining,
    Teacher,
    batch_indices,
    drop_blocks,
    sparsity,
    student_from_config,
    train,
)
from slimline.distill.losses import soft_kl
from slimline.errors import ConfigError, DataError, TrainingError
from slimline.models import LoadedModel, tiny_model


@pytest.fixture(scope="module")
def teacher():
    return tiny_model("llama", n_blocks=4, seed=0)


@pytest.fixture(scope="module")
def ids():
    # structured data (a few repeated patterns), so a few steps of KD measurably help
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 500, (4, 16), generator=g)
    return base.repeat(3, 2)[:, :24]  # [12, 24]


def _kl(student, teacher, ids):
    with torch.no_grad():
        return soft_kl(student(ids).logits, teacher(ids).logits, 1.0).item()


def test_kd_reduces_divergence(teacher, ids):
    s = drop_blocks(teacher, keep=2)
    before = _kl(s.model, teacher.model, ids)
    cfg = DistillConfig(
        losses={"kl": 1.0, "hidden": 0.5}, max_steps=8, batch_size=4, lr=5e-3, seq_len=24
    )
    r = train(s.model, teacher.model, ids, cfg, tokenizer=s.tokenizer)
    after = _kl(s.model, teacher.model, ids)
    assert r.steps == 8 and len(r.losses) == 8
    assert after < 0.8 * before  # measured 0.0090 -> 0.0058 (x0.64)


def test_batch_indices_deterministic_epochs():
    n = 6
    seen = torch.cat([batch_indices(s, m, 2, 2, n, seed=3) for s in range(3) for m in range(2)])
    # 12 draws over n=6 samples = 2 epochs, each a permutation
    assert sorted(seen[:6].tolist()) == list(range(6)) and sorted(seen[6:].tolist()) == list(
        range(6)
    )
    assert not torch.equal(seen[:6], seen[6:])
    assert torch.equal(batch_indices(2, 1, 2, 2, n, seed=3), seen[10:12])
    two = [batch_indices(0, 0, 1, 2, n, seed=3, process=p, n_processes=2) for p in (0, 1)]
    assert not set(two[0].tolist()) & set(two[1].tolist())  # processes see disjoint samples


class _Crash(LoopHook):
    def __init__(self, at: int):
        self.at = at

    def after_step(self, model, step):
        if step == self.at:
            raise KeyboardInterrupt  # a killed job


def test_resume_equals_uninterrupted(teacher, ids, tmp_path):
    cfg = DistillConfig(
        losses={"kl": 1.0, "ce": 0.2, "hidden": 0.3},
        max_steps=7,
        batch_size=2,
        grad_accum=2,
        lr=2e-3,
        warmup_steps=2,
        checkpoint_every=2,
        seq_len=24,
    )  # 7 steps x 4 samples = 28 draws over 12 samples: crosses two epoch boundaries
    a = drop_blocks(teacher, keep=2)
    ra = train(a.model, teacher.model, ids, cfg, tmp_path / "a", tokenizer=a.tokenizer)

    b = drop_blocks(teacher, keep=2)
    with pytest.raises(KeyboardInterrupt):
        train(
            b.model,
            teacher.model,
            ids,
            cfg,
            tmp_path / "b",
            hooks=[_Crash(5)],
            tokenizer=b.tokenizer,
        )
    b2 = drop_blocks(teacher, keep=2)  # a fresh process: weights come from the checkpoint
    rb = train(
        b2.model, teacher.model, ids, cfg, tmp_path / "b", resume=True, tokenizer=b2.tokenizer
    )
    assert rb.resumed_from == 4
    assert rb.losses == pytest.approx(ra.losses, abs=1e-6)  # measured: bit-identical
    for (n, pa), (_, pb) in zip(
        a.model.state_dict().items(), b2.model.state_dict().items(), strict=True
    ):
        assert torch.allclose(pa, pb, atol=1e-6), n
    log = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 8))  # no duplicated steps after resume
    assert all(r["tokens_per_s"] > 0 for r in log)
    ck = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ck == ["step-0000006", "step-0000007"]  # keep_checkpoints=2
    assert (tmp_path / "b" / "checkpoints" / "step-0000007" / "model.safetensors").exists()


def test_foreign_checkpoint_refused(teacher, ids, tmp_path):
    cfg = DistillConfig(max_steps=2, batch_size=2, seq_len=24)
    s = drop_blocks(teacher, keep=2)
    train(s.model, teacher.model, ids, cfg, tmp_path, tokenizer=s.tokenizer)
    other = DistillConfig(max_steps=4, batch_size=2, seq_len=24, lr=5e-4)
    with pytest.raises(TrainingError, match="another run"):
        train(drop_blocks(teacher, keep=2).model, teacher.model, ids, other, tmp_path, resume=True)
    with pytest.raises(TrainingError, match="another run"):  # same config, other data
        train(
            drop_blocks(teacher, keep=2).model,
            teacher.model,
            ids + 1,
            cfg.model_copy(update={"max_steps": 4}),
            tmp_path,
            resume=True,
        )
    with pytest.raises(TrainingError, match="already holds checkpoints"):
        train(drop_blocks(teacher, keep=2).model, teacher.model, ids, cfg, tmp_path)
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(
            drop_blocks(teacher, keep=2).model,
            teacher.model,
            ids,
            cfg,
            tmp_path / "new",
            resume=True,
        )


class _Poison(LoopHook):
    def after_step(self, model, step):
        if step == 3:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_and_names_last_good_checkpoint(teacher, ids, tmp_path):
    cfg = DistillConfig(max_steps=6, batch_size=2, checkpoint_every=2, seq_len=24)
    s = drop_blocks(teacher, keep=2)
    with pytest.raises(TrainingError, match="step-0000002") as e:
        train(s.model, teacher.model, ids, cfg, tmp_path, hooks=[_Poison()], tokenizer=s.tokenizer)
    assert "step 4" in e.value.problem and e.value.fix
    assert (tmp_path / "checkpoints" / "step-0000002").exists()
    log = (tmp_path / "train_log.jsonl").read_text()
    assert '"event": "nan"' in log


def test_bad_inputs(teacher, ids):
    s = drop_blocks(teacher, keep=2)
    cfg = DistillConfig(max_steps=1, batch_size=2, seq_len=24)
    with pytest.raises(DataError):
        train(s.model, teacher.model, ids.float(), cfg)
    with pytest.raises(DataError):
        train(s.model, teacher.model, torch.zeros(0, 4, dtype=torch.long), cfg)
    with pytest.raises(DataError, match="attention_mask"):
        train(s.model, teacher.model, {"input_ids": ids, "attention_mask": torch.ones(2, 2)}, cfg)
    with pytest.raises(ConfigError, match="unknown losses"):
        make_config("distill", {"losses": {"kll": 1.0}})
    # logit losses across different tokenizers are refused, feature losses are allowed
    bert_tok = tiny_model("bert").tokenizer
    foreign = LoadedModel(teacher.model, bert_tok, teacher.arch, "causal-lm", "foreign")
    with pytest.raises(ConfigError, match="tokenizers differ"):
        train(s.model, Teacher(foreign), ids, cfg, tokenizer=s.tokenizer)
    r = train(
        s.model,
        Teacher(foreign),
        ids,
        DistillConfig(losses={"hidden": 1.0}, max_steps=1, batch_size=2),
        tokenizer=s.tokenizer,
    )
    assert r.steps == 1
    # an encoder student cannot take logit losses
    enc = tiny_model("bert")
    with pytest.raises(ConfigError, match="encoder"):
        train(enc.model, enc.model, ids, cfg)


def test_width_mismatch_uses_projection_or_refuses(teacher, ids):
    narrow = student_from_config(
        teacher, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "head_dim": 8}
    )
    cfg = DistillConfig(losses={"kl": 1.0, "hidden": 1.0}, max_steps=3, batch_size=2, seq_len=24)
    r = train(narrow.model, teacher.model, ids, cfg, tokenizer=narrow.tokenizer)
    assert r.extra["projection"] is True
    with pytest.raises(ConfigError, match="projections are off"):
        train(narrow.model, teacher.model, ids, cfg.model_copy(update={"project": False}))


def test_attention_and_value_losses_train(teacher, ids):
    s = drop_blocks(teacher, keep=2)
    cfg = DistillConfig(
        losses={"attn": 1.0, "value": 1.0}, max_steps=6, batch_size=4, lr=3e-3, seq_len=24
    )
    r = train(s.model, teacher.model, ids, cfg, tokenizer=s.tokenizer)
    assert r.losses[-1] < r.losses[0]  # measured 0.00054 -> 0.00027 (seeded, deterministic)


def test_pruning_masks_hold_inside_the_loop(teacher, ids, tmp_path):
    s = drop_blocks(teacher, keep=2)
    hook = GradualPruning(0.5, every=2, end=0.5, targets=["re:.*mlp.*"])
    cfg = DistillConfig(max_steps=8, batch_size=2, lr=1e-2, seq_len=24, checkpoint_every=4)
    train(s.model, teacher.model, ids, cfg, tmp_path, hooks=[hook], tokenizer=s.tokenizer)
    assert sparsity(s.model, hook.modules) == pytest.approx(0.5, abs=0.01)  # measured 0.5
    for name, mod in hook.modules.items():  # every pruned weight stayed exactly zero
        assert torch.all(mod.weight[~hook.masks[name]] == 0), name
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    sp = [r["sparsity"] for r in log]
    assert sp == sorted(sp) and sp[0] < 0.5  # rises gradually (cubic schedule)
    # the attention projections were not targeted
    assert sparsity(s.model, {"q": s.arch.blocks(s.model)[0].self_attn.q_proj}) == 0.0


def test_qat_hook_runs_inside_the_loop(teacher, ids):
    s = drop_blocks(teacher, keep=2)
    hook = QuantAwareTraining(bits=4, group_size=32, symmetric=False)
    r = train(
        s.model,
        teacher.model,
        ids,
        DistillConfig(max_steps=3, batch_size=2, seq_len=24),
        hooks=[hook],
        tokenizer=s.tokenizer,
    )
    assert r.extra["hooks"]["qat"]["qat_layers"] == len(hook.layers) > 0
    w = s.arch.blocks(s.model)[0].mlp.up_proj.weight  # back to nn.Linear, weights on the grid
    assert isinstance(s.arch.blocks(s.model)[0].mlp.up_proj, torch.nn.Linear)
    assert w[0, :32].unique().numel() <= 16  # 4 bits per group of 32


def test_minilm_encoder_distils(minilm):
    from slimline.data import sentences
    from slimline.models import embed

    student = drop_blocks(minilm, keep=3)
    texts = sentences("python-docs", split="fit", n=24)
    enc = minilm.tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    held = minilm.tokenizer(
        sentences("python-docs", "eval", 16),
        padding=True,
        truncation=True,
        max_length=48,
        return_tensors="pt",
    )

    def cos():
        a = embed(student, held["input_ids"], held["attention_mask"])
        b = embed(minilm, held["input_ids"], held["attention_mask"])
        return (a * b).sum(-1).mean().item()

    before = cos()
    cfg = DistillConfig(
        losses={"embed": 1.0, "hidden": 1.0},
        layer_map="uniform",
        max_steps=6,
        batch_size=4,
        lr=2e-4,
        seq_len=48,
    )
    train(student.model, minilm, dict(enc), cfg, tokenizer=student.tokenizer)
    after = cos()
    assert after > before  # measured 0.484 -> 0.628 on held-out paragraphs


def test_truncated_smollm2_kd(smollm2, calib_small):
    from slimline.models import truncate

    t = truncate(smollm2, 4)
    s = drop_blocks(t, keep=2)
    held = calib_small[6:, :32]
    before = _kl(s.model, t.model, held)
    cfg = DistillConfig(
        losses={"kl": 1.0}, max_steps=4, batch_size=2, lr=3e-4, temperature=1.0, seq_len=32
    )
    train(s.model, t, calib_small[:6, :32], cfg, tokenizer=s.tokenizer)
    after = _kl(s.model, t.model, held)
    assert after < before  # measured 3.53 -> 2.01 (held-out windows)


def test_plain_fine_tuning_never_runs_the_teacher(teacher, ids):
    # the CE baseline of the benchmark must not pay for a teacher forward it throws away
    calls = []
    s = drop_blocks(teacher, keep=2)  # before the hook: a deep copy would carry it along
    handle = teacher.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        cfg = DistillConfig(losses={"ce": 1.0}, max_steps=2, batch_size=4, seq_len=24)
        train(s.model, teacher.model, ids, cfg, tokenizer=s.tokenizer)
        assert calls == []  # teacher forwards in 2 CE steps: 0
        cfg = DistillConfig(losses={"kl": 1.0}, max_steps=2, batch_size=4, seq_len=24)
        train(s.model, teacher.model, ids, cfg, tokenizer=s.tokenizer)
        assert len(calls) == 2  # one per KD step
    finally:
        handle.remove()
