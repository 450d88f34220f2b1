"""The few shared concepts: technique configs, the technique registry, the context, layer selection
and the codec registry through which compressed modules reach an artifact.

A technique is a frozen pydantic config plus one ``apply(model, config, ctx) -> dict`` function,
registered under a short name (``quant.gptq``) that recipes and search spaces use. The config's
``needs`` says what the caller must put in the context (calibration data, training data, a
teacher); ``apply_technique`` wraps the function's own details in a typed ``StageRecord``.
"""

from __future__ import annotations

import abc
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from slimline.errors import ConfigError

log = logging.getLogger("slimline")


def config_error(what: str, e: ValidationError) -> ConfigError:
    """A pydantic validation failure as a slimline error naming every bad field."""
    details = "; ".join(
        f"{'.'.join(map(str, err['loc'])) or what}: {err['msg']}" for err in e.errors()
    )
    return ConfigError(
        f"invalid {what} config: {details}",
        "`slimline techniques KIND` lists the fields a technique takes, with their defaults",
    )


Need = Literal["calib", "train", "teacher"]


class SizeEffect(BaseModel):
    """What a stage can do to the stored size of the Linear weights inside the blocks, declared
    by its config so a recipe's smallest reachable size is known before anything runs:
    ``bits`` the fewest bits per weight it may store them in (None: it leaves their width),
    ``kept`` the smallest share of them it may keep (zeros a sparse format can skip)."""

    model_config = ConfigDict(frozen=True)
    bits: float | None = None
    kept: float = 1.0


class TechniqueConfig(BaseModel):
    """Base of every technique config: frozen, strict about unknown fields, JSON round-trippable.

    ``targets``/``ignore`` select modules the same way in every technique (see ``select_modules``).
    ``needs``: what the runner supplies in the context before ``apply`` (a technique never loads
    data or models itself): ``calib`` -> ``ctx.calib``, ``train`` -> ``ctx.train``, ``teacher``
    -> ``ctx.teacher`` (the model its ``teacher`` field names; ``"base"`` = the recipe's model).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str] = ""
    version: ClassVar[int] = 1
    needs: ClassVar[frozenset[Need]] = frozenset()

    def requires(self) -> frozenset[Need]:
        """What this config needs supplied (``needs``; a config may narrow it by its fields,
        e.g. magnitude head importance needs no data)."""
        return self.needs

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise config_error(self.kind or type(self).__name__, e) from e

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.version, **self.model_dump(mode="json")}

    def size_effect(self) -> SizeEffect | None:
        """What this stage can do to the blocks' stored weights (``SizeEffect``); None when its
        config cannot bound it (it removes parameters, trains, factorises: no size guarantee)."""
        return None

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result (a run resumes under the same identity): all of
        them, unless a config leaves out how long it runs (distill's steps and minutes)."""
        return self.to_dict()


ApplyFn = Callable[[nn.Module, Any, "Context"], dict[str, Any]]


@dataclass(frozen=True)
class Technique:
    kind: str
    config: type[TechniqueConfig]
    apply: ApplyFn
    summary: str = ""


_TECHNIQUES: dict[str, Technique] = {}


def register_technique(
    config: type[TechniqueConfig], summary: str = ""
) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator: ``@register_technique(Gptq)`` on the apply function registers it under ``Gptq.kind``."""

    def wrap(fn: ApplyFn) -> ApplyFn:
        kind = config.kind
        if not kind:
            raise ValueError(f"{config.__name__} has no `kind`")
        _TECHNIQUES[kind] = Technique(
            kind, config, fn, summary or (fn.__doc__ or "").strip().split("\n")[0]
        )
        return fn

    return wrap


_PACKAGES = ("slimline.quant", "slimline.prune", "slimline.distill", "slimline.lowrank")


def _import_package(mod: str) -> None:
    import importlib

    try:
        importlib.import_module(mod)
    except ModuleNotFoundError as e:  # an area that is not installed / written
        if e.name != mod:
            raise


def _load_builtin_techniques(kind: str | None = None) -> None:
    """Importing a technique package registers its techniques. With ``kind``, only the package
    its prefix names (``quant.gptq`` -> ``slimline.quant``) is imported."""
    if kind is not None:
        pkg = f"slimline.{kind.split('.', 1)[0]}"
        if pkg in _PACKAGES:
            _import_package(pkg)
            return
    for mod in _PACKAGES:
        _import_package(mod)


def techniques() -> dict[str, Technique]:
    _load_builtin_techniques()
    return dict(sorted(_TECHNIQUES.items()))


def get_technique(kind: str) -> Technique:
    if kind not in _TECHNIQUES:
        _load_builtin_techniques(kind)
    if kind in _TECHNIQUES:
        return _TECHNIQUES[kind]
    table = techniques()
    if kind not in table:
        raise ConfigError(
            f"unknown technique {kind!r}",
            f"use one of: {', '.join(table) or '(none registered)'}",
        )
    return table[kind]


def make_config(kind: str, params: dict[str, Any] | None) -> TechniqueConfig:
    """Build a validated config from a short name and plain parameters (YAML, search spaces)."""
    return get_technique(kind).config(**(params or {}))


@dataclass
class Context:
    """What techniques need and should not fetch themselves."""

    tokenizer: Any = None
    calib: torch.Tensor | None = None  # [N, T] token ids for one-shot methods
    train: torch.Tensor | None = None  # [N, T] token ids for training stages
    eval: torch.Tensor | None = None  # [N, T] token ids for quick in-stage checks
    teacher: nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    workdir: Path | None = None
    log: logging.Logger = log
    extra: dict[str, Any] = field(default_factory=dict)


class ModuleChange(BaseModel):
    """What one weight-holding module became: its class, logical shape (out, in), stored bits per
    weight (every tensor it keeps for its weight: codes, scales, masks; bias left out) and the
    share of zeros in its weight where that is countable. ``name_after`` is None when removed."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type_before: str | None
    type_after: str | None
    name_after: str | None
    shape_before: list[int] | None
    shape_after: list[int] | None
    bits_before: float | None
    bits_after: float | None
    sparsity_after: float | None = None


class StageRecord(BaseModel):
    """What one technique did, in one shape for every technique: the runner's stage trace, the
    schema, the report and the registry read these fields instead of guessing from configs."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str
    config: dict[str, Any]
    modules: dict[str, ModuleChange]  # by name before the stage; only modules that changed
    edits: list[dict[str, Any]] = []  # structural edits in order (a replayable log)
    params_before: int
    params_after: int
    bytes_before: int  # bytes of every tensor a state dict holds (what an artifact stores)
    bytes_after: int
    details: dict[str, Any] = {}  # the technique's own numbers (errors, steps, losses, ...)

    # Read like the technique's own dict (``rec["steps"]``): its details first, then the fields.
    def __getitem__(self, key: str) -> Any:
        if key in self.details:
            return self.details[key]
        if key in type(self).model_fields:
            return getattr(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in self.details or key in type(self).model_fields

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


def _weight_state(mod: nn.Module) -> tuple[list[int] | None, float | None, float | None]:
    """(logical shape, stored bits per weight, zero share) of a weight-holding module."""
    out_f, in_f = getattr(mod, "out_features", None), getattr(mod, "in_features", None)
    w = mod._parameters.get("weight")
    if isinstance(w, torch.Tensor) and w.dim() >= 2:
        shape = list(w.shape)
    elif isinstance(out_f, int) and isinstance(in_f, int):
        shape = [out_f, in_f]
    else:
        return None, None, None
    n = 1
    for d in shape:
        n *= d
    transient = mod._non_persistent_buffers_set  # e.g. a pruning mask: never stored
    stored = sum(
        t.numel() * t.element_size()
        for key, t in [*mod._parameters.items(), *mod._buffers.items()]
        if t is not None and key != "bias" and key not in transient
    )
    zeros: float | None = None
    if isinstance(w, torch.Tensor) and w.dim() >= 2 and w.device.type != "meta":
        zeros = 1.0 - int(torch.count_nonzero(w)) / max(n, 1)
    elif isinstance(getattr(mod, "nnz", None), int):
        zeros = 1.0 - mod.nnz / max(n, 1)  # type: ignore[attr-defined]
    return shape, stored * 8 / max(n, 1), zeros


def _holders(model: nn.Module) -> dict[str, tuple[nn.Module, tuple]]:
    """Weight-holding modules by name (a codec's inner modules belong to it), with their state."""
    out: dict[str, tuple[nn.Module, tuple]] = {}
    skip: tuple[str, ...] = ()
    for name, mod in model.named_modules():
        if not name or (skip and name.startswith(skip)):
            continue
        state = _weight_state(mod)
        if state[0] is None:
            continue
        if isinstance(mod, Codec):
            skip = (*skip, name + ".")
        out[name] = (mod, (type(mod).__name__, *state))
    return out


def _changes(
    before: dict[str, tuple[nn.Module, tuple]], model: nn.Module
) -> dict[str, ModuleChange]:
    """Modules that changed, matched by identity: a module that survives (maybe renamed, as
    blocks after a removed one are) is compared with itself; one gone whose name now holds a new
    module was replaced (Linear -> QuantLinear); one gone otherwise was removed."""
    after = _holders(model)
    old_ids = {id(m) for m, _ in before.values()}
    where = {id(m): n for n, (m, _) in after.items()}
    changes: dict[str, ModuleChange] = {}
    for name, (mod, (t0, shape0, bits0, z0)) in before.items():
        new_name = where.get(id(mod))
        if new_name is None and name in after and id(after[name][0]) not in old_ids:
            new_name = name  # replaced in place by a new module
        if new_name is None:
            changes[name] = ModuleChange(
                type_before=t0, type_after=None, name_after=None, shape_before=shape0,
                shape_after=None, bits_before=bits0, bits_after=None,
            )  # fmt: skip
            continue
        _, (t1, shape1, bits1, z1) = after[new_name]
        if (t0, shape0, bits0, z0) != (t1, shape1, bits1, z1):
            changes[name] = ModuleChange(
                type_before=t0, type_after=t1, name_after=new_name, shape_before=shape0,
                shape_after=shape1, bits_before=bits0, bits_after=bits1, sparsity_after=z1,
            )  # fmt: skip
    matched = {c.name_after for c in changes.values()} | {
        where.get(id(m)) for m, _ in before.values()
    }
    for name, (_, (t1, shape1, bits1, z1)) in after.items():
        if name not in matched:  # a module that did not exist before (a low-rank factor, ...)
            changes[name] = ModuleChange(
                type_before=None, type_after=t1, name_after=name, shape_before=None,
                shape_after=shape1, bits_before=None, bits_after=bits1, sparsity_after=z1,
            )  # fmt: skip
    return changes


def _json(v: Any) -> Any:
    """A technique's details as JSON (tensors as lists when small, else their shape)."""
    import json

    def default(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            return o.tolist() if o.numel() <= 4096 else f"tensor{tuple(o.shape)}"
        return str(o)

    return json.loads(json.dumps(v, default=default))


def apply_technique(
    model: nn.Module, config: TechniqueConfig, ctx: Context | None = None
) -> StageRecord:
    """Run one technique on ``model`` in place and return its typed record: the modules that
    changed (found by comparing the model before and after, so no technique can misreport
    them), its structural edits, and parameters and stored bytes before and after."""
    tech = get_technique(config.kind)
    return record_stage(model, config, lambda: tech.apply(model, config, ctx or Context()))


def record_stage(
    model: nn.Module, config: TechniqueConfig, run: Callable[[], dict[str, Any] | None]
) -> StageRecord:
    """Run ``run()`` (which changes ``model`` in place and returns its details) and type what it
    did: the one place a ``StageRecord`` is made, for ``apply_technique`` and the verbs."""
    from slimline.profile.static import param_stats

    before, stats0 = _holders(model), param_stats(model)
    details = dict(run() or {})
    stats1 = param_stats(model)
    edits = details.pop("edits", [])
    return StageRecord(
        kind=config.kind,
        config=config.to_dict(),
        modules=_changes(before, model),
        edits=_json(edits),
        params_before=stats0.total,
        params_after=stats1.total,
        bytes_before=stats0.bytes,
        bytes_after=stats1.bytes,
        details=_json(details),
    )


# --- layer selection -------------------------------------------------------------------------


def _matches(pattern: str, name: str, module: nn.Module) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    if pattern == type(module).__name__:
        return True
    # An exact name, or a name suffix on a dot boundary: "lm_head" matches "lm_head" only,
    # "self_attn.q_proj" matches every block's q_proj.
    return name == pattern or name.endswith("." + pattern)


def select_modules(
    model: nn.Module,
    targets: Iterable[str] | None,
    ignore: Iterable[str] | None = None,
    *,
    default_types: tuple[type[nn.Module], ...] = (nn.Linear,),
    within: Iterable[str] | None = None,
) -> dict[str, nn.Module]:
    """Modules selected by ``targets`` minus ``ignore``.

    A pattern is a class name (``Linear``), an exact module name or dotted suffix (``lm_head``,
    ``mlp.down_proj``), or a regex with the ``re:`` prefix (``re:.*mlp.*``), as in llm-compressor.
    With no targets, every module of ``default_types`` under ``within`` (name prefixes) is selected.
    Tied modules (one weight under two names) are returned once under their first name.
    """
    targets = list(targets or [])
    ignore = list(ignore or [])
    prefixes = tuple(p.rstrip(".") + "." for p in within) if within else None
    out: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for name, mod in model.named_modules():
        if not name:
            continue
        if targets:
            hit = any(_matches(p, name, mod) for p in targets)
        else:
            hit = isinstance(mod, default_types) and (prefixes is None or name.startswith(prefixes))
        if not hit or any(_matches(p, name, mod) for p in ignore):
            continue
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        out[name] = mod
    # A tied weight: ignoring either name must protect both (llm-compressor pruned a tied embedding
    # through lm_head; we refuse to). Drop selected modules whose weight is shared with an ignored one.
    if ignore:
        ignored_weights = {
            id(getattr(m, "weight", None))
            for n, m in model.named_modules()
            if n
            and any(_matches(p, n, m) for p in ignore)
            and getattr(m, "weight", None) is not None
        }
        out = {
            n: m
            for n, m in out.items()
            if id(getattr(m, "weight", None)) not in ignored_weights
            or getattr(m, "weight", None) is None
        }
    return out


def require_selection(
    selected: dict[str, nn.Module], targets: Iterable[str] | None, what: str
) -> None:
    if not selected:
        raise ConfigError(
            f"the layer patterns {list(targets or [])} match no module to {what}",
            "list module names with `slimline profile MODEL --modules`, or use `re:` regexes",
        )


# --- codecs: how a compressed module becomes tensors + metadata in an artifact, and back ---------


class Codec(abc.ABC):
    """Base for compressed modules that need more than a state dict to rebuild.

    A subclass of ``nn.Module`` that also derives from ``Codec`` sets ``codec = "quant.linear"``,
    returns ``(tensors, meta)`` from ``pack()`` and rebuilds itself in ``unpack(tensors, meta)``.
    ``meta`` must be JSON. The artifact writer stores tensors as ``<module>.<key>``.
    """

    codec: ClassVar[str] = ""

    @abc.abstractmethod
    def pack(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    @classmethod
    @abc.abstractmethod
    def unpack(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module: ...


_CODECS: dict[str, type[Codec]] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    if not cls.codec:
        raise ValueError(f"{cls.__name__} has no `codec` name")
    _CODECS[cls.codec] = cls
    return cls


def get_codec(name: str) -> type[Codec]:
    if name not in _CODECS:
        _load_builtin_techniques(name)
    if name not in _CODECS:
        _load_builtin_techniques()
    if name not in _CODECS:
        raise ConfigError(
            f"unknown module codec {name!r} in artifact", f"known: {', '.join(sorted(_CODECS))}"
        )
    return _CODECS[name]


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads for this process (None: leave torch's default). Refuses anything
    but a whole number of at least 1, before any work starts."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(
            f"the number of threads must be a whole number of at least 1, got {threads!r}",
            "pass --threads 1 or more (the default is 2)",
        )
    torch.set_num_threads(threads)
