"""Build a student from its teacher: drop blocks, shrink the MLP width, or start from a config.

The student inherits the teacher's tokenizer and every weight that maps; its HF config and each
attention's ``layer_idx`` are rewritten so it saves, reloads and caches like a native model.
Where blocks live comes from ``slimline.models.arch``; nothing here guesses module names.
"""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from slimline.core import Context, Need, TechniqueConfig, register_technique
from slimline.errors import ConfigError
from slimline.models import LoadedModel, get_arch

__all__ = [
    "StudentCut",
    "angular_importance",
    "choose_blocks",
    "drop_blocks",
    "keep_blocks",
    "parse_student_spec",
    "shrink_mlp",
    "student_from_config",
]


def choose_blocks(
    n_blocks: int,
    *,
    keep: int | None = None,
    drop_every: int | None = None,
    importance: Sequence[float] | None = None,
) -> list[int]:
    """Indices of the blocks to keep, in order.

    ``keep=N``: N evenly spaced blocks, always the first and the last (they carry the most
    distinct work: embedding read-in and logit read-out). ``drop_every=k``: drop blocks k-1,
    2k-1, ... (every k-th). With ``importance`` (one score per block, higher = more important)
    and ``keep``, the ``keep`` highest-scoring blocks are kept.
    """
    if (keep is None) == (drop_every is None):
        raise ConfigError(
            "say how to cut the teacher: exactly one of keep=N or drop_every=k",
            "e.g. --student-from smollm2-135m:keep=20 or :drop-every=3",
        )
    if keep is not None:
        if not 1 <= keep <= n_blocks:
            raise ConfigError(
                f"cannot keep {keep} of {n_blocks} blocks", f"choose keep between 1 and {n_blocks}"
            )
        if importance is not None:
            if len(importance) != n_blocks:
                raise ConfigError(
                    f"{len(importance)} importance scores for {n_blocks} blocks",
                    "score every block",
                )
            order = sorted(range(n_blocks), key=lambda i: (-float(importance[i]), i))
            return sorted(order[:keep])
        if keep == 1:
            return [n_blocks - 1]
        return sorted({round(i * (n_blocks - 1) / (keep - 1)) for i in range(keep)})
    assert drop_every is not None
    if drop_every < 2:
        raise ConfigError(
            f"drop_every must be at least 2 (got {drop_every}; 1 would drop every block)",
            "use drop_every >= 2",
        )
    return [i for i in range(n_blocks) if (i + 1) % drop_every != 0]


@torch.no_grad()
def angular_importance(
    lm: LoadedModel, input_ids: torch.Tensor, batch_size: int = 4
) -> list[float]:
    """Per-block importance: mean angular distance between a block's input and output states.

    Gromov et al. 2024 ("The Unreasonable Ineffectiveness of the Deeper Layers"): a block whose
    output points where its input did changes little and is the cheapest to remove. Uses
    ``slimline.prune.rank_blocks`` instead when the pruning area provides it.
    """
    try:
        rank = importlib.import_module("slimline.prune").rank_blocks
    except (ModuleNotFoundError, AttributeError):
        rank = None
    if rank is not None:
        ranked = rank(lm.model, input_ids, n=1, batch_size=batch_size)
        by_block = {int(r["block"]): float(r["distance"]) for r in ranked}
        return [by_block[i] for i in range(len(by_block))]
    model = lm.model
    n = lm.arch.n_blocks(model.config)
    total = torch.zeros(n, dtype=torch.float64)
    count = 0
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size]
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        for i in range(n):
            a, b = hs[i].double(), hs[i + 1].double()
            cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).clamp(-1, 1)
            total[i] += (torch.arccos(cos) / math.pi).sum()
        count += ids.numel()
    return (total / max(count, 1)).tolist()


def _renumber(blocks: nn.ModuleList) -> None:
    for i, block in enumerate(blocks):
        for mod in block.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = i


def drop_blocks(
    lm: LoadedModel,
    *,
    keep: int | None = None,
    drop_every: int | None = None,
    indices: Sequence[int] | None = None,
    importance: Sequence[float] | None = None,
) -> LoadedModel:
    """A deep copy of ``lm`` with only some blocks: ``keep``/``drop_every``/``importance`` as in
    ``choose_blocks``, or explicit ``indices``. Config, ``layer_types`` and ``layer_idx`` follow."""
    arch = lm.arch
    n = arch.n_blocks(lm.model.config)
    if indices is None:
        indices = choose_blocks(n, keep=keep, drop_every=drop_every, importance=importance)
    idx = sorted({int(i) for i in indices})
    if not idx or idx[0] < 0 or idx[-1] >= n:
        raise ConfigError(f"block indices {list(indices)} are not within 0..{n - 1}", "fix them")
    model = copy.deepcopy(lm.model).requires_grad_(True)  # a teacher copy may be frozen
    keep_blocks(model, idx)
    model.eval()
    out = LoadedModel(model, lm.tokenizer, get_arch(model), lm.kind, f"{lm.source}:blocks", lm.path)
    out.extra["student"] = {"from": lm.source, "kept_blocks": idx, "teacher_blocks": n}
    return out


def keep_blocks(model: nn.Module, idx: Sequence[int]) -> None:
    """Keep only blocks ``idx`` (sorted, valid) of ``model``, in place; config, ``layer_types``
    and each attention's ``layer_idx`` follow."""
    arch = get_arch(model)
    blocks = arch.blocks(model)
    kept = nn.ModuleList([blocks[i] for i in idx])
    _renumber(kept)
    parent, _, child = arch.block_path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, kept)
    cfg = model.config
    setattr(cfg, arch.config_keys["n_blocks"], len(idx))
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in idx]


class StudentCut(TechniqueConfig):
    """Cut a student from the stage's model before distilling into it: keep ``keep`` blocks
    (ranked by angular distance on calibration data, or ``importance: even`` for evenly spaced),
    or drop every ``drop_every``-th block; and/or keep ``mlp`` of the MLP channels (by magnitude)."""

    kind: ClassVar[str] = "distill.student"
    keep: int | None = Field(None, ge=1)
    drop_every: int | None = Field(None, ge=2)
    importance: Literal["angular", "even"] = "angular"
    mlp: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _one_cut(self) -> StudentCut:
        if self.keep is not None and self.drop_every is not None:
            raise ValueError("give keep or drop_every, not both")
        if self.keep is None and self.drop_every is None and self.mlp is None:
            raise ValueError("say how to cut: keep, drop_every and/or mlp")
        return self

    def requires(self) -> frozenset[Need]:
        """Calibration data to rank blocks by angular distance; none for the other cuts."""
        angular = self.keep is not None and self.importance == "angular"
        return frozenset({"calib"}) if angular else frozenset()


@register_technique(StudentCut)
@torch.no_grad()
def apply_student_cut(model: nn.Module, cfg: StudentCut, ctx: Context) -> dict[str, Any]:
    """Cut the student from the teacher in place: blocks first, then MLP width."""
    arch = get_arch(model)
    n = arch.n_blocks(model.config)
    out: dict[str, Any] = {"teacher_blocks": n}
    if cfg.keep is not None or cfg.drop_every is not None:
        importance = None
        if "calib" in cfg.requires():
            if ctx.calib is None:
                raise ConfigError(
                    "ranking blocks by angular distance needs calibration data and none was given",
                    "run it as a recipe stage (the runner supplies it), or use importance: even",
                )
            lm = LoadedModel(model, ctx.tokenizer, arch, arch.kind, "stage")
            importance = angular_importance(lm, ctx.calib)
        idx = choose_blocks(n, keep=cfg.keep, drop_every=cfg.drop_every, importance=importance)
        keep_blocks(model, idx)
        out["kept_blocks"] = idx
    if cfg.mlp is not None and cfg.mlp < 1.0:
        from slimline.prune.structured import PruneMlp, apply_mlp

        inter = get_arch(model).intermediate(model.config)
        rec = apply_mlp(model, PruneMlp(amount=1.0 - cfg.mlp, importance="magnitude"), ctx)
        out.update(mlp_keep=cfg.mlp, teacher_intermediate=inter, edits=rec.get("edits", []))
    return out


@torch.no_grad()
def shrink_mlp(lm: LoadedModel, ratio: float) -> LoadedModel:
    """A copy of ``lm`` whose MLP keeps ``ratio`` of its intermediate channels in every block.

    Uses the pruning area's ``prune.mlp`` technique when it exists. Otherwise channels are ranked
    by ||W_out[:, j]|| * sum ||W_in[j, :]|| (how much each channel can write, times how strongly it
    reads) and the weakest are physically removed; the config's intermediate size follows.
    """
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"MLP keep ratio must be in (0, 1] (got {ratio})", "e.g. 0.5")
    if ratio == 1.0:
        return LoadedModel(
            copy.deepcopy(lm.model), lm.tokenizer, lm.arch, lm.kind, lm.source, lm.path
        )
    try:
        from slimline.core import Context, apply_technique, make_config

        cfg = make_config("prune.mlp", {"amount": 1.0 - ratio, "importance": "magnitude"})
    except ConfigError:
        cfg = None  # the pruning area has no prune.mlp: cut the channels here
    if cfg is not None:
        model = copy.deepcopy(lm.model).requires_grad_(True)
        rec = apply_technique(model, cfg, Context())
        new = LoadedModel(
            model, lm.tokenizer, get_arch(model), lm.kind, f"{lm.source}:mlp", lm.path
        )
        new.extra["student"] = {"from": lm.source, "mlp_keep": ratio, "prune": rec.get("params")}
        return new
    arch = lm.arch
    if arch.conv1d or arch.mlp_fused:
        raise ConfigError(
            f"MLP shrinking here supports separate nn.Linear projections, not {arch.family}'s "
            "Conv1D / fused gate_up",
            "drop blocks instead, or use the pruning area's prune.mlp (it splits fused gate_up)",
        )
    model = copy.deepcopy(lm.model).requires_grad_(True)
    inter = arch.intermediate(model.config)
    n_keep = max(1, round(inter * ratio))
    for block in arch.blocks(model):
        ins = arch.linear(block, "mlp_in")
        out = arch.linear(block, "mlp_out")
        score = out.weight.norm(dim=0) * sum(m.weight.norm(dim=1) for m in ins)
        keep = score.topk(n_keep).indices.sort().values
        for m in ins:
            m.weight = nn.Parameter(m.weight[keep].clone())
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias[keep].clone())
            m.out_features = n_keep
        out.weight = nn.Parameter(out.weight[:, keep].clone())
        out.in_features = n_keep
    setattr(model.config, arch.config_keys["intermediate"], n_keep)
    model.eval()
    new = LoadedModel(model, lm.tokenizer, get_arch(model), lm.kind, f"{lm.source}:mlp", lm.path)
    new.extra["student"] = {"from": lm.source, "mlp_intermediate": n_keep, "teacher": inter}
    return new


def student_from_config(
    teacher: LoadedModel, overrides: dict[str, Any], *, seed: int = 0, allow_wider: bool = False
) -> LoadedModel:
    """A new model of the teacher's family with ``overrides`` applied to its config.

    Weights that fit are inherited: embeddings, final norm and head when the width matches, and
    each student block from the teacher block a uniform layer map assigns it, tensor by tensor
    where shapes agree. A student wider than its teacher is refused unless ``allow_wider``: it
    is not a compression and its features cannot be matched without a learned projection.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    from slimline.distill.losses import layer_map

    arch = teacher.arch
    cfg = copy.deepcopy(teacher.model.config)
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ConfigError(
                f"{type(cfg).__name__} has no field {k!r}",
                f"fields: {', '.join(sorted(cfg.to_dict()))}",
            )
        setattr(cfg, k, v)
    n_key = arch.config_keys["n_blocks"]
    teacher_types = getattr(teacher.model.config, "layer_types", None)
    if teacher_types is not None and "layer_types" not in overrides:
        # each student block takes its teacher block's attention type (Gemma's sliding/global
        # pattern survives), by the same uniform map that assigns its weights
        pick = layer_map(getattr(cfg, n_key), arch.n_blocks(teacher.model.config), "uniform")
        cfg.layer_types = [teacher_types[pick[i + 1] - 1] for i in range(getattr(cfg, n_key))]
    if arch.hidden(cfg) > arch.hidden(teacher.model.config) and not allow_wider:
        raise ConfigError(
            f"the student is wider than its teacher ({arch.hidden(cfg)} > "
            f"{arch.hidden(teacher.model.config)}): no weights map and it is not smaller",
            "choose hidden_size <= the teacher's, or pass allow_wider=True to student_from_config "
            "and train hidden losses with a projection",
        )
    torch.manual_seed(seed)
    cls = AutoModel if teacher.kind == "encoder" else AutoModelForCausalLM
    model = cls.from_config(cfg, dtype=torch.float32)
    t_sd = teacher.model.state_dict()
    s_sd = model.state_dict()
    prefix = arch.block_path + "."
    mapping = layer_map(arch.n_blocks(cfg), arch.n_blocks(teacher.model.config), "uniform")
    copied = 0
    for name, tensor in s_sd.items():
        src = name
        if name.startswith(prefix):
            i, _, rest = name[len(prefix) :].partition(".")
            src = f"{prefix}{mapping[int(i) + 1] - 1}.{rest}"
        if src in t_sd and t_sd[src].shape == tensor.shape:
            tensor.copy_(t_sd[src])
            copied += 1
    model.eval()
    out = LoadedModel(model, teacher.tokenizer, get_arch(model), teacher.kind, "config", None)
    out.extra["student"] = {
        "from": teacher.source,
        "config": overrides,
        "tensors_inherited": copied,
    }
    return out


def parse_student_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"smollm2-135m:keep=20"`` -> ("smollm2-135m", {"keep": 20}); also ``drop-every=3``,
    ``mlp=0.5``, ``importance=angular``. The model part may itself contain ':' (a path)."""
    base, sep, opts = spec.rpartition(":")
    if not sep or "=" not in opts:
        return spec, {}
    params: dict[str, Any] = {}
    for item in opts.split(","):
        k, eq, v = item.partition("=")
        k = k.strip().replace("-", "_")
        if not eq or k not in ("keep", "drop_every", "mlp", "importance"):
            raise ConfigError(
                f"cannot read student option {item!r} in {spec!r}",
                "use MODEL:keep=N (by angular distance; importance=even for evenly spaced), MODEL:drop-every=K or MODEL:mlp=0.5",
            )
        try:
            params[k] = float(v) if k == "mlp" else (v if k == "importance" else int(v))
        except ValueError as e:
            raise ConfigError(
                f"student option {k} needs a number, got {v!r}", "e.g. keep=20"
            ) from e
    return base, params
