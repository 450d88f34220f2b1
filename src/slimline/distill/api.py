"""The public verb ``distill(teacher, student, data, config)`` and the ``distill`` technique.

The verb turns what a user has (names, paths, loaded models, a text source) into the trainer's
inputs, adds the in-loop hooks the config asks for, trains, and saves the student (an artifact
when the artifact module is present, else a plain ``save_pretrained`` directory) beside the log.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimline.core import Context, StageRecord, record_stage, register_technique
from slimline.distill.config import DistillConfig
from slimline.distill.curriculum import curriculum_order, difficulty
from slimline.distill.hooks import GradualPruning, LoopHook, QuantAwareTraining
from slimline.distill.student import (
    angular_importance,
    drop_blocks,
    parse_student_spec,
    shrink_mlp,
)
from slimline.distill.teachers import CachedTeacher, Teacher, cache_teacher
from slimline.distill.trainer import TrainResult, train
from slimline.errors import ConfigError, InputError
from slimline.models import LoadedModel, get_arch, load_model

__all__ = ["DistillResult", "build_student", "distill", "make_data", "make_hooks"]


@dataclass
class DistillResult:
    student: LoadedModel
    train: TrainResult
    model_dir: Path | None

    def record(self) -> dict[str, Any]:
        r = self.train
        return {
            "steps": r.steps,
            "resumed_from": r.resumed_from,
            "stopped": r.stopped,
            "tokens": r.tokens,
            "seconds": round(r.seconds, 2),
            "tokens_per_s": round(r.tokens / r.seconds, 1) if r.seconds else None,
            "first_loss": r.losses[0] if r.losses else None,
            "last_loss": r.losses[-1] if r.losses else None,
            "log": str(r.log_path) if r.log_path else None,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "student": self.student.extra.get("student"),
            "hooks": r.extra.get("hooks"),
        }


def build_student(
    teacher: LoadedModel, spec: str | dict[str, Any], calib: torch.Tensor | None = None
) -> LoadedModel:
    """A student cut from ``teacher`` by a spec: ``{"keep": 20}``, ``{"drop_every": 3}``,
    ``{"keep": 20, "importance": "even"}``, ``{"mlp": 0.5}`` (or the CLI string form). ``keep``
    ranks blocks by angular distance on calibration data (``importance="even"``: evenly spaced)."""
    params = parse_student_spec(f"x:{spec}")[1] if isinstance(spec, str) else dict(spec)
    if not params:
        raise ConfigError(f"empty student spec {spec!r}", "e.g. keep=20, drop-every=3 or mlp=0.5")
    lm = teacher
    if "keep" in params or "drop_every" in params:
        # keep=N cuts by angular distance unless told otherwise: on SmolLM2 keep=20 the evenly
        # spaced cut gave python-docs ppl 12,510 before training, the angular cut 44.0
        # (bench/results/distill.md)
        how = params.get("importance", "angular" if "keep" in params else "even")
        if how not in ("angular", "even"):
            raise ConfigError(
                f"unknown block importance {how!r}", "use importance=angular or importance=even"
            )
        importance = None
        if how == "angular" and "keep" in params:
            if calib is None:
                from slimline.data import calibration_blocks

                calib = calibration_blocks(teacher.tokenizer, n=8, seq_len=128)
            importance = angular_importance(teacher, calib)
        lm = drop_blocks(
            lm, keep=params.get("keep"), drop_every=params.get("drop_every"), importance=importance
        )
    if "mlp" in params:
        info = lm.extra.get("student", {})
        lm = shrink_mlp(lm, float(params["mlp"]))
        lm.extra["student"] = {**info, **lm.extra.get("student", {})}
    return lm


def make_data(
    lm: LoadedModel, source: str, seq_len: int, seed: int = 0
) -> dict[str, torch.Tensor] | torch.Tensor:
    """Training data from a source name or path: packed blocks for causal LMs, padded
    paragraphs for encoders (the first half of the text: never the eval half)."""
    from slimline.data import sentences, train_blocks

    if lm.kind == "encoder":
        texts = sentences(source, split="fit", n=100_000)
        enc = lm.tokenizer(
            texts, padding=True, truncation=True, max_length=seq_len, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if source.endswith(".jsonl") and Path(source).exists():
        from slimline.distill.sequences import load_sequences

        return load_sequences(source, lm.tokenizer, seq_len)
    return train_blocks(lm.tokenizer, source, seq_len=seq_len, seed=seed)


def make_hooks(cfg: DistillConfig) -> list[LoopHook]:
    hooks: list[LoopHook] = []
    if cfg.prune_sparsity:
        hooks.append(
            GradualPruning(
                cfg.prune_sparsity,
                every=cfg.prune_every,
                end=cfg.prune_end,
                targets=cfg.prune_targets,
                ignore=cfg.prune_ignore,
            )
        )
    if cfg.qat is not None:
        hooks.append(QuantAwareTraining(**cfg.qat))
    return hooks


def _as_lm(x: Any, what: str) -> LoadedModel | None:
    if isinstance(x, LoadedModel):
        return x
    if isinstance(x, (str, os.PathLike)):
        return load_model(x)
    if isinstance(x, nn.Module):
        return None
    raise InputError(
        f"cannot use a {type(x).__name__} as the {what}",
        "pass a model, a LoadedModel or a model spec",
    )


def _save_model(lm: LoadedModel, out: Path, record: StageRecord) -> Path:
    """Save the student as a signed artifact whose stage trace is the typed training record."""
    from slimline.artifact import save_artifact

    target = out / "model"
    manifest = {"stages": [record.model_dump(mode="json")]}
    save_artifact(lm, lm.tokenizer, target, manifest=manifest, overwrite=True)
    return target


def distill(
    teacher: Any,
    student: Any,
    data: Any = None,
    config: DistillConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    hooks: list[LoopHook] | None = None,
    resume: bool = False,
    **overrides: Any,
) -> DistillResult:
    """Distil ``teacher`` into ``student`` and return the trained student with its run record.

    ``teacher``: a model spec, LoadedModel, nn.Module, ``Teacher`` (ensemble) or ``CachedTeacher``.
    ``student``: a LoadedModel / nn.Module / spec, or a cut of the teacher (``"keep=20"``,
    ``{"drop_every": 3}``). ``data``: token blocks, a dict with a mask, or a source name
    (default ``config.data``). ``overrides`` are config fields. ``max_steps=0`` returns (and
    saves) the cut student untrained.
    """
    from slimline.core import make_config

    base = (config or DistillConfig()).model_dump()
    cfg = make_config("distill", {**base, **overrides})  # validates overrides: ConfigError if bad
    assert isinstance(cfg, DistillConfig)
    if out_dir is not None:  # before any model is loaded or trained, not after training
        from slimline.artifact.spec import is_artifact
        from slimline.outputs import check_output

        check_output(out_dir, replace=True, what="distill output dir")
        check_output(Path(out_dir) / "model", replace=is_artifact, what="student model dir")
    t_lm = None
    if isinstance(teacher, (Teacher, CachedTeacher)):
        t = teacher
        first = teacher.members[0] if isinstance(teacher, Teacher) else None
        t_lm = first if isinstance(first, LoadedModel) else None
    else:
        t_lm = _as_lm(teacher, "teacher")
        t = Teacher(t_lm if t_lm is not None else teacher)
    if isinstance(student, dict) or (
        isinstance(student, str) and "=" in student and not Path(student).exists()
    ):
        if t_lm is None:
            raise ConfigError(
                "a student cut from the teacher needs a loaded teacher",
                "pass a model spec or LoadedModel",
            )
        s_lm = build_student(t_lm, student)
    else:
        s_lm = _as_lm(student, "student")
        if s_lm is None:
            s_lm = LoadedModel(
                student,
                getattr(t, "tokenizer", None),
                get_arch(student),
                get_arch(student).kind,
                type(student).__name__,
            )
    if data is None or isinstance(data, str):
        data = make_data(s_lm, data or cfg.data, cfg.seq_len, cfg.seed)
    out = Path(out_dir) if out_dir is not None else None
    trained: list[TrainResult] = []

    def run() -> dict[str, Any]:
        trained.append(
            fit(s_lm.model, t, data, cfg, out / "run" if out else None, cache_dir=out,
                hooks=hooks, resume=resume, tokenizer=s_lm.tokenizer)
        )  # fmt: skip
        return {}

    record = record_stage(s_lm.model, cfg, run)
    s_lm.arch = get_arch(s_lm.model)
    res = DistillResult(s_lm, trained[0], None)
    if out is not None:
        from slimline.recipe.ranks import barrier, is_main

        record = record.model_copy(
            update={"details": json.loads(json.dumps(res.record(), default=str))}
        )
        if is_main():  # under `accelerate launch -n N` one process writes, the others wait
            res.model_dir = _save_model(s_lm, out, record)
            (out / "distill.json").write_text(
                json.dumps({"kind": "distill", "config": cfg.to_dict(), **res.record()}, indent=2)
                + "\n"
            )
        else:
            res.model_dir = out / "model"
        barrier()
    return res


def fit(
    model: nn.Module,
    teacher: Any,
    data: Any,
    cfg: DistillConfig,
    run_dir: Path | None,
    *,
    cache_dir: Path | None = None,
    hooks: list[LoopHook] | None = None,
    resume: bool = False,
    tokenizer: Any = None,
) -> TrainResult:
    """The one training path of the verb and the ``distill`` stage: wrap the teacher, order the
    data by the curriculum, cache the teacher's top-k (in ``cache_dir``), add the config's
    in-loop hooks, train ``model`` in place and leave it in eval mode."""
    t = teacher if isinstance(teacher, (Teacher, CachedTeacher)) else Teacher(teacher)
    ids = data["input_ids"] if isinstance(data, dict) else data
    mask = data.get("attention_mask") if isinstance(data, dict) else None
    order = None
    if cfg.curriculum != "none":
        live = t.models[0] if isinstance(t, Teacher) else None
        order = curriculum_order(difficulty(live, ids, mask, by=cfg.curriculum))
    if cfg.cache_topk and isinstance(t, Teacher):
        if cache_dir is None:
            raise ConfigError(
                "cache_topk needs an output directory to keep the cache in", "pass out_dir"
            )
        from slimline.recipe.ranks import barrier, is_main

        where = cache_dir / "teacher_topk.safetensors"
        if not where.exists() and is_main():  # one process writes it, the others read it
            cache_teacher(t, ids, where, k=cfg.cache_topk, attention_mask=mask)
        barrier()
        t = CachedTeacher(where, ids)  # refuses a cache made for other data
    model.requires_grad_(True)
    result = train(
        model,
        t,
        data,
        cfg,
        run_dir,
        hooks=make_hooks(cfg) + list(hooks or []),
        resume=resume,
        tokenizer=tokenizer,
        curriculum_order=order,
    )
    model.eval()
    return result


@register_technique(DistillConfig)
def apply_distill(model: nn.Module, cfg: DistillConfig, ctx: Context) -> dict[str, Any]:
    """Distil a teacher into this stage's model (the student), in place."""
    if ctx.teacher is None:
        raise ConfigError(
            f"distill with teacher {cfg.teacher!r} needs the teacher model (the model as it was "
            "before the recipe, for 'base') and none was given",
            "run it inside a recipe (the runner supplies it), or pass ctx.teacher",
        )
    if ctx.train is None:
        raise ConfigError(
            "distill needs training data and none was given",
            "run it inside a recipe (the runner supplies it), or pass ctx.train "
            "(slimline.distill.make_data)",
        )
    tok = ctx.tokenizer or getattr(ctx.teacher, "tokenizer", None)
    out = ctx.workdir / "distill" if ctx.workdir is not None else None
    # a stage killed mid-training, or re-entered with more steps, goes on from its checkpoints
    resume = out is not None and any((out / "checkpoints").glob("step-*"))
    r = fit(
        model, ctx.teacher, ctx.train, cfg, out, cache_dir=ctx.workdir, resume=resume, tokenizer=tok
    )
    return {
        "steps": r.steps,
        "resumed_from": r.resumed_from,
        "tokens": r.tokens,
        "seconds": round(r.seconds, 2),
        "first_loss": r.losses[0] if r.losses else None,
        "last_loss": r.losses[-1] if r.losses else None,
        "stopped": r.stopped,
        "hooks": r.extra.get("hooks"),
    }
