"""The distillation config: one frozen, JSON-round-trippable object for Python, YAML and search."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from slimline.core import Need, TechniqueConfig

LOSS_NAMES = ("kl", "rkl", "jsd", "ce", "hidden", "attn", "value", "embed")

# Fields that control how long/where a run goes, not what it learns: they may change on resume.
RUN_CONTROL = ("max_steps", "minutes", "checkpoint_every", "log_every", "keep_checkpoints")


class DistillConfig(TechniqueConfig):
    """Knowledge distillation into the stage's model (the student).

    ``losses`` weights any of: ``kl`` (soft targets, forward KL at ``temperature``), ``rkl``
    (reverse KL), ``jsd`` (generalized JSD, ``jsd_beta``), ``ce`` (hard next-token labels),
    ``hidden`` (feature matching over ``layer_map``), ``attn`` (attention KL, last layers),
    ``value`` (MiniLM value relation, last layers), ``embed`` (sentence embeddings, encoders).
    Default: soft + hard targets, ``kl 0.5 + ce 0.5`` — on SmolLM2 students cut to 20 and 15
    blocks it beat plain CE on python-docs and Hamlet alike, where KL alone lost in-domain
    (bench/results/distill.md, measured at T=1).
    """

    kind: ClassVar[str] = "distill"
    needs: ClassVar[frozenset[Need]] = frozenset({"train", "teacher"})

    teacher: str = "base"  # "base" = the model before the recipe, or a model spec
    losses: dict[str, float] = Field(default_factory=lambda: {"kl": 0.5, "ce": 0.5})
    temperature: float = Field(2.0, gt=0)
    jsd_beta: float = Field(0.5, gt=0, lt=1)
    layer_map: str | list[int] | dict[int, int] = "uniform"
    hidden_kind: Literal["mse", "cosine"] = "mse"
    embed_kind: Literal["cosine", "mse"] = "cosine"
    relation_heads: int = Field(1, ge=1)
    project: bool = True  # learn linear projections when student/teacher widths differ
    cache_topk: int | None = Field(None, ge=1)  # run the teacher once, keep its top-k logits

    data: str = "python-docs"  # used when the context holds no training blocks
    seq_len: int = Field(256, ge=2)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(100, ge=0)
    minutes: float | None = Field(None, gt=0)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    clip: float | None = Field(1.0, gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    seed: int = 0
    curriculum: Literal["none", "entropy", "length"] = "none"

    checkpoint_every: int = Field(0, ge=0)  # 0 = only at the end
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)

    prune_sparsity: float | None = Field(None, gt=0, lt=1)  # gradual magnitude pruning target
    prune_every: int = Field(10, ge=1)
    prune_end: float = Field(0.75, gt=0, le=1)  # fraction of max_steps by which it is reached
    prune_targets: list[str] = Field(default_factory=list)
    prune_ignore: list[str] = Field(default_factory=lambda: ["lm_head"])
    qat: dict[str, Any] | None = None  # passed to slimline.quant.qat.enable_qat

    @field_validator("losses")
    @classmethod
    def _known_losses(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown losses {unknown}; known: {', '.join(LOSS_NAMES)}")
        if any(w < 0 for w in v.values()) or not any(w > 0 for w in v.values()):
            raise ValueError("loss weights must be >= 0 with at least one > 0")
        return v

    def identity(self) -> dict[str, Any]:
        """The fields that define what the run learns (compared on resume)."""
        d = self.to_dict()
        for k in RUN_CONTROL:
            d.pop(k, None)
        return d
