"""The few shared concepts: technique configs, the technique registry, the context, layer selection
and the codec registry through which compressed modules reach an artifact.

A technique is a frozen pydantic config plus one ``apply(model, config, ctx) -> dict`` function,
registered under a short name (``quant.gptq``) that recipes and search spaces use.
"""

from __future__ import annotations

import abc
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
        f"invalid {what} config: {details}", "see `slimline techniques` for the fields"
    )


class TechniqueConfig(BaseModel):
    """Base of every technique config: frozen, strict about unknown fields, JSON round-trippable.

    ``targets``/``ignore`` select modules the same way in every technique (see ``select_modules``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise config_error(self.kind or type(self).__name__, e) from e

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.version, **self.model_dump(mode="json")}


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


def apply_technique(
    model: nn.Module, config: TechniqueConfig, ctx: Context | None = None
) -> dict[str, Any]:
    """Run one technique on ``model`` in place and return its record."""
    tech = get_technique(config.kind)
    record = tech.apply(model, config, ctx or Context())
    return {"kind": config.kind, "config": config.to_dict(), **(record or {})}


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
