"""Teachers: one model or a weighted ensemble, each normalised before averaging, and a disk cache
of a teacher's top-k logits so an expensive teacher runs once per dataset.

Ensembling averages *probabilities* (a mixture), after each teacher's logits are divided by its
own temperature, so a sharp teacher does not drown a soft one just by its logit scale; ``"auto"``
fits that temperature by temperature scaling (Guo et al. 2017) on held-out tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from slimline.errors import ConfigError, DataError, TrainingError
from slimline.models import LoadedModel, get_arch

__all__ = [
    "CachedTeacher",
    "Teacher",
    "TeacherOutput",
    "cache_teacher",
    "fit_temperature",
    "same_tokenizer",
]


@dataclass
class TeacherOutput:
    """What the loss functions read from the teacher side (absent fields are None)."""

    logits: torch.Tensor | None = None  # [B, T, V]; for ensembles, log of the mixture
    hidden: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    values: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, T, C]
    topk_index: torch.Tensor | None = None  # cached teachers
    topk_logits: torch.Tensor | None = None


def _vocab_signature(tok: Any) -> str:
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    items = sorted(vocab.items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when two tokenizers map every token to the same id (logit losses are then defined)."""
    if a is b:
        return True
    if a is None or b is None:
        return False
    return len(a) == len(b) and _vocab_signature(a) == _vocab_signature(b)


@contextmanager
def capture_values(model: nn.Module, layers: Sequence[int]) -> Any:
    """Record the value projection output of the given blocks (1-based, as hidden_states count)."""
    arch = get_arch(model)
    if "v" not in arch.roles:
        raise ConfigError(
            f"{arch.family} has a fused qkv projection; value-relation loss needs a separate v",
            "use attention or hidden losses for this family",
        )
    out: dict[int, torch.Tensor] = {}
    handles = []
    blocks = arch.blocks(model)
    for layer in layers:
        mod = arch.linear(blocks[layer - 1], "v")

        def hook(_m: nn.Module, _i: Any, o: torch.Tensor, layer: int = layer) -> None:
            out[layer] = o

        handles.append(mod.register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def run_model(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    hidden: bool = False,
    attentions: bool = False,
    value_layers: Sequence[int] = (),
) -> TeacherOutput:
    """One forward pass returning logits (causal LMs), hidden states, attentions and values."""
    with capture_values(model, value_layers) if value_layers else _null() as values:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=hidden,
            output_attentions=attentions,
        )
    return TeacherOutput(
        logits=getattr(out, "logits", None),
        hidden=getattr(out, "hidden_states", None) if hidden else None,
        attentions=getattr(out, "attentions", None) if attentions else None,
        values=dict(values or {}),
    )


@contextmanager
def _null() -> Any:
    yield None


@torch.no_grad()
def fit_temperature(
    model: nn.Module, input_ids: torch.Tensor, grid: Sequence[float] | None = None
) -> float:
    """The temperature that minimises next-token NLL on ``input_ids`` (temperature scaling).

    A 1-D problem, so a fine grid is exact enough and needs no optimiser state.
    """
    logits = model(input_ids=input_ids).logits[:, :-1].float()
    target = input_ids[:, 1:].reshape(-1)
    flat = logits.reshape(-1, logits.shape[-1])
    grid = list(grid or [0.5 + 0.05 * i for i in range(51)])  # 0.5 .. 3.0
    nll = [F.cross_entropy(flat / t, target).item() for t in grid]
    return float(grid[min(range(len(grid)), key=nll.__getitem__)])


class Teacher:
    """One teacher or a weighted ensemble, called like a model that returns ``TeacherOutput``.

    ``temperatures``: one per member (dividing its logits before softmax), or ``"auto"`` to fit
    each member's by temperature scaling on ``calib`` ids. Features (hidden, attention, values)
    come from the first member: feature losses need one consistent target geometry.
    """

    def __init__(
        self,
        members: LoadedModel | nn.Module | Sequence[LoadedModel | nn.Module],
        weights: Sequence[float] | None = None,
        temperatures: Sequence[float] | str | None = None,
        calib: torch.Tensor | None = None,
    ):
        if isinstance(members, (LoadedModel, nn.Module)):
            members = [members]
        self.members: list[LoadedModel | nn.Module] = list(members)
        if not self.members:
            raise ConfigError("a teacher ensemble needs at least one model", "pass a teacher")
        self.models = [m.model if isinstance(m, LoadedModel) else m for m in self.members]
        w = list(weights) if weights is not None else [1.0] * len(self.models)
        if len(w) != len(self.models) or any(x < 0 for x in w) or sum(w) <= 0:
            raise ConfigError(
                f"ensemble weights {w} do not fit {len(self.models)} teachers",
                "give one non-negative weight per teacher, not all zero",
            )
        self.weights = [x / sum(w) for x in w]
        if temperatures == "auto":
            if calib is None:
                raise ConfigError(
                    "temperature='auto' needs held-out ids to fit on",
                    "pass calib=LongTensor[N, T]",
                )
            self.temperatures = [fit_temperature(m, calib) for m in self.models]
        elif temperatures is None:
            self.temperatures = [1.0] * len(self.models)
        else:
            self.temperatures = [float(t) for t in temperatures]  # type: ignore[union-attr]
            if len(self.temperatures) != len(self.models) or min(self.temperatures) <= 0:
                raise ConfigError(
                    f"temperatures {self.temperatures} do not fit {len(self.models)} teachers",
                    "give one positive temperature per teacher, or 'auto'",
                )
        for m in self.models:
            m.eval()
            m.requires_grad_(False)

    @property
    def tokenizer(self) -> Any:
        first = self.members[0]
        return first.tokenizer if isinstance(first, LoadedModel) else None

    def identity(self) -> dict[str, Any]:
        """What the run fingerprint records about the teacher(s)."""
        names = [m.source if isinstance(m, LoadedModel) else type(m).__name__ for m in self.members]
        sizes = [sum(p.numel() for p in m.parameters()) for m in self.models]
        return {
            "teachers": names,
            "params": sizes,
            "weights": self.weights,
            "temps": self.temperatures,
        }

    def to(self, device: torch.device) -> Teacher:
        for m in self.models:
            m.to(device)
        return self

    def mix_logits(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """log sum_i w_i softmax(z_i / T_i): a normalised mixture (usable wherever logits are)."""
        if len(logits) == 1 and self.temperatures[0] == 1.0:
            return logits[0]
        shapes = {tuple(z.shape) for z in logits}
        if len(shapes) != 1:
            raise ConfigError(
                f"ensemble teachers give logits of different shapes {sorted(shapes)}",
                "ensemble only teachers that share one tokenizer",
            )
        parts = [
            F.log_softmax(z.float() / t, dim=-1) + math.log(w)
            for z, t, w in zip(logits, self.temperatures, self.weights, strict=True)
            if w > 0
        ]
        return torch.logsumexp(torch.stack(parts), dim=0)

    @torch.no_grad()
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        logits: bool = True,
        hidden: bool = False,
        attentions: bool = False,
        value_layers: Sequence[int] = (),
        indices: torch.Tensor | None = None,
    ) -> TeacherOutput:
        first = run_model(
            self.models[0],
            input_ids,
            attention_mask,
            hidden=hidden,
            attentions=attentions,
            value_layers=value_layers,
        )
        if logits and first.logits is not None:
            rest = [
                m(input_ids=input_ids, attention_mask=attention_mask).logits
                for m in self.models[1:]
            ]
            first.logits = self.mix_logits([first.logits, *rest])
        elif not logits:
            first.logits = None
        return first


# --- cached teacher outputs -----------------------------------------------------------------------


@torch.no_grad()
def cache_teacher(
    teacher: Teacher | LoadedModel | nn.Module,
    input_ids: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    k: int = 64,
    batch_size: int = 4,
    attention_mask: torch.Tensor | None = None,
) -> Path:
    """Run the teacher once over ``input_ids`` and store its top-``k`` logits per position as
    safetensors (index int32 + logits fp32) with the data fingerprint, so later runs (and every
    epoch) read them instead of running the teacher."""
    from slimline.data import fingerprint
    from slimline.progress import track

    t = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
    N = input_ids.shape[0]
    idx_parts, val_parts = [], []
    for start in track(range(0, N, batch_size), "caching teacher logits"):
        ids = input_ids[start : start + batch_size]
        m = None if attention_mask is None else attention_mask[start : start + batch_size]
        z = t(ids, m).logits
        if z is None:
            raise ConfigError("the teacher gives no logits to cache", "cache causal-LM teachers")
        kk = min(k, z.shape[-1])
        v, i = z.float().topk(kk, dim=-1)
        idx_parts.append(i.to(torch.int32))
        val_parts.append(v)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "k": str(min(k, val_parts[0].shape[-1])),
        "data_fingerprint": fingerprint(input_ids),
        "teacher": json.dumps(t.identity()),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(
            {"topk_index": torch.cat(idx_parts), "topk_logits": torch.cat(val_parts)},
            tmp,
            metadata=meta,
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class CachedTeacher:
    """Reads a ``cache_teacher`` file; gives the top-k logits of the samples a batch holds."""

    def __init__(self, path: str | os.PathLike[str], input_ids: torch.Tensor | None = None):
        from slimline.data import fingerprint

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"no teacher cache at {self.path}", "create it with cache_teacher()")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                self.meta = f.metadata() or {}
                self.index = f.get_tensor("topk_index")
                self.logits = f.get_tensor("topk_logits")
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise DataError(
                f"{self.path} is not a readable teacher cache ({e})",
                "recreate it with cache_teacher()",
            ) from e
        if input_ids is not None and self.meta.get("data_fingerprint") != fingerprint(input_ids):
            raise TrainingError(
                f"the teacher cache {self.path} was made for other data "
                f"(fingerprint {self.meta.get('data_fingerprint')} != {fingerprint(input_ids)})",
                "recreate the cache for this dataset",
            )
        self.tokenizer = None

    def identity(self) -> dict[str, Any]:
        return {
            "cache": self.meta.get("data_fingerprint"),
            "k": self.meta.get("k"),
            "teacher": json.loads(self.meta.get("teacher", "{}")),
        }

    def to(self, device: torch.device) -> CachedTeacher:
        return self

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        indices: torch.Tensor | None = None,
        **_: Any,
    ) -> TeacherOutput:
        if indices is None:
            raise TrainingError(
                "a cached teacher needs the sample indices of the batch", "pass indices="
            )
        dev = input_ids.device
        return TeacherOutput(
            topk_index=self.index[indices].to(dev).long(), topk_logits=self.logits[indices].to(dev)
        )
