"""Open a model directory of safetensors without reading its weights: the skeleton on the meta
device, each part read from disk only when asked for, and given back afterwards.

This is what lets a model larger than memory be compressed (``slimline.calib.stream``): the
calibration engine materialises one block, the method compresses it, the block is written out
and released. Every check ``load_model`` makes still runs, at open time when it needs no
weights (the shard files exist, every tensor the config builds is there with its shape and a
dtype we read, nothing unexpected, no model code) and on each part as it is read (finite
values). Weights are read as float32, exactly as ``load_model`` returns them.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimline.errors import ModelLoadError
from slimline.models.arch import Arch, get_arch
from slimline.models.checks import check_finite, check_load_report, check_remote_code

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class LazyModel:
    """A model whose weights stay on disk until ``materialize`` reads them."""

    model: nn.Module  # on the meta device, except buffers computed at construction (rotary)
    tokenizer: Any
    arch: Arch
    kind: str
    path: Path
    where: dict[str, Path]  # stored tensor name -> shard file
    aliases: dict[str, list[str]]  # every state-dict name -> all names sharing its tensor
    bytes_on_disk: int = 0
    _held: dict[str, list[tuple[nn.Module, str, bool]]] = field(default_factory=dict)

    def names_under(self, prefixes: Iterable[str]) -> list[str]:
        """State-dict names (persistent tensors) under any of ``prefixes`` (``""`` = the root)."""
        pre = tuple(p + "." if p else "" for p in prefixes)
        return [k for k in self.aliases if k.startswith(pre)]

    def materialize(self, key: str, names: list[str]) -> None:
        """Read tensors ``names`` (and every name tied to them) from disk into the skeleton,
        as float32; remember them under ``key`` for ``release``. Refuses NaN/Inf weights."""
        from safetensors import safe_open

        want: dict[str, list[str]] = defaultdict(list)  # shard -> stored names
        groups: dict[str, list[str]] = {}
        for n in names:
            group = self.aliases[n]
            stored = next((a for a in group if a in self.where), None)
            if stored is None or stored in groups:
                continue
            groups[stored] = group
            want[str(self.where[stored])].append(stored)
        held = self._held.setdefault(key, [])
        holder = nn.Module()
        for shard, stored_names in want.items():
            with safe_open(shard, framework="pt") as f:  # closed (unmapped) after each part
                for s in stored_names:
                    t = f.get_tensor(s)
                    if t.is_floating_point():
                        t = t.to(torch.float32)
                    first = self.model.get_submodule(groups[s][0].rpartition(".")[0])
                    cur = getattr(first, groups[s][0].rpartition(".")[2])
                    is_param = isinstance(cur, nn.Parameter)
                    grad = is_param and cur.requires_grad and t.is_floating_point()
                    value: torch.Tensor = nn.Parameter(t, requires_grad=grad) if is_param else t
                    for name in groups[s]:
                        mod_name, _, attr = name.rpartition(".")
                        mod = self.model.get_submodule(mod_name) if mod_name else self.model
                        if is_param:
                            mod._parameters[attr] = value  # type: ignore[assignment]
                        else:
                            mod._buffers[attr] = value
                        held.append((mod, attr, is_param))
                    holder.register_buffer(s.replace(".", "/"), value)
        check_finite(holder, str(self.path))

    def release(self, key: str) -> None:
        """Give the tensors read under ``key`` back to the meta device (also in modules a method
        has since replaced: nothing read from disk stays referenced)."""
        metas: dict[int, torch.Tensor] = {}
        for mod, attr, is_param in self._held.pop(key, []):
            store = mod._parameters if is_param else mod._buffers
            t = store.get(attr)
            if t is None or t.device.type == "meta":
                continue
            if id(t) not in metas:
                m = torch.empty_like(t, device="meta")
                metas[id(t)] = nn.Parameter(m, requires_grad=t.requires_grad) if is_param else m
            store[attr] = metas[id(t)]  # type: ignore[assignment]


def _shards(path: Path) -> tuple[dict[str, Path], list[Path]]:
    """Stored tensor name -> shard file, from the index (sharded) or the single file."""
    if (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text())["weight_map"]
            assert isinstance(weight_map, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
            raise ModelLoadError(
                f"{path / INDEX} is not a valid safetensors index ({e})",
                "restore the index file as save_pretrained wrote it",
            ) from e
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            n = sum(1 for v in weight_map.values() if v in missing)
            raise ModelLoadError(
                f"{path} lacks shard {', '.join(missing[:3])} listed in {INDEX} ({n} tensors)",
                "restore the missing shard file(s) from where the model came from",
            )
        return {k: path / v for k, v in weight_map.items()}, [path / f for f in files]
    if (path / SINGLE).is_file():
        return {}, [path / SINGLE]
    raise ModelLoadError(
        f"{path} holds no safetensors weights ({SINGLE} or {INDEX}); streaming reads only those",
        "save the model with save_pretrained(DIR, safe_serialization=True), or drop --stream",
    )


def _scan(path: Path) -> tuple[dict[str, Path], dict[str, tuple[str, list[int]]], int]:
    """Every stored tensor's shard, dtype and shape, from the headers alone."""
    from safetensors import safe_open

    mapped, files = _shards(path)
    where: dict[str, Path] = {}
    info: dict[str, tuple[str, list[int]]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():  # noqa: SIM118 - safe_open is not a dict
                    sl = h.get_slice(k)
                    where[k] = f
                    info[k] = (sl.get_dtype(), list(sl.get_shape()))
        except Exception as e:  # safetensors raises its own error types for a corrupt header
            raise ModelLoadError(
                f"{f} is not a readable safetensors file ({e})",
                "restore the file from where the model came from",
            ) from e
    lost = sorted(k for k, f in mapped.items() if where.get(k) != f)
    if lost:
        raise ModelLoadError(
            f"{path}: tensors {lost[:3]} are listed in {INDEX} but not in their shard",
            "restore the shards and the index of the same save",
        )
    odd = sorted(k for k, (d, _) in info.items() if d not in DTYPES)
    if odd:
        raise ModelLoadError(
            f"{path}: tensor {odd[0]} is {info[odd[0]][0]} ({len(odd)} such); streamed "
            f"compression reads {', '.join(DTYPES)} weights",
            "save the model in float32, float16 or bfloat16 (model.to(torch.bfloat16)"
            ".save_pretrained(DIR)), or compress it without --stream",
        )
    return where, info, sum(f.stat().st_size for f in files)


# integer / 8-bit float weights: quantized codes, whose scales a dense checkpoint does not hold
CODE_DTYPES = ("I8", "U8", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4")


def check_dense_dtypes(path: Path, cfg: dict[str, Any]) -> None:
    """Refuse a checkpoint whose config declares no quantization but whose weights are integer
    or 8-bit float codes: transformers would cast the codes to floats and load a wreck without
    a word. Headers only (``load_model`` calls it before building anything)."""
    from safetensors import safe_open

    if cfg.get("quantization_config") or not (
        (path / INDEX).is_file() or (path / SINGLE).is_file()
    ):
        return
    _mapped, files = _shards(path)
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                odd = [
                    (k, d)
                    for k in h.keys()  # noqa: SIM118 - safe_open is not a dict
                    if k.endswith("weight") and (d := h.get_slice(k).get_dtype()) in CODE_DTYPES
                ]
        except Exception as e:  # safetensors raises its own error types for a corrupt header
            raise ModelLoadError(
                f"{f} is not a readable safetensors file ({e})",
                "restore the file from where the model came from",
            ) from e
        if odd:
            raise ModelLoadError(
                f"{path}: tensor {odd[0][0]} is {odd[0][1]} ({len(odd)} such in {f.name}) but "
                "config.json declares no quantization: loading would read integer codes as weights",
                "save the model in float32, float16 or bfloat16 "
                "(model.to(torch.bfloat16).save_pretrained(DIR))",
            )


def open_lazy(path: str | Path, *, trust_remote_code: bool = False) -> LazyModel:
    """Open the Hugging Face directory ``path`` (safetensors, sharded or not) lazily."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from slimline.artifact.io import _no_init
    from slimline.models.load import (
        TOKENIZER_FILES,
        _check_no_pickle,
        _is_encoder_config,
        _refuse_unfinished_or_unsigned,
        _wrap_load_error,
    )

    root = Path(path)
    if not (root / "config.json").is_file():
        raise ModelLoadError(
            f"{root} is not a Hugging Face model directory (no config.json)",
            "stream a directory written by save_pretrained (config.json + safetensors)",
        )
    _refuse_unfinished_or_unsigned(root)
    from slimline.artifact.spec import is_artifact

    if is_artifact(root):
        raise ModelLoadError(
            f"{root} is a slimline artifact (already compressed); --stream reads Hugging Face "
            "directories of plain weights",
            "stream the model it was made from, or compress the artifact without --stream",
        )
    try:
        cfg = json.loads((root / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(
            f"{root}/config.json is not a readable JSON config ({e})",
            "point at a Hugging Face model directory",
        ) from e
    _check_no_pickle(root, allow_unsafe_pickle=False)
    check_remote_code(root, cfg, trust_remote_code)
    if not any((root / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{root} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:4])}, ...)",
            "save the tokenizer beside the weights: tokenizer.save_pretrained(DIR)",
        )
    where, info, size = _scan(root)
    encoder = _is_encoder_config(cfg)
    cls = AutoModel if encoder else AutoModelForCausalLM
    try:
        config = AutoConfig.from_pretrained(str(root), local_files_only=True)
        with init_empty_weights(include_buffers=False), _no_init():
            model = cls.from_config(config, dtype=torch.float32)
        model.tie_weights()  # skipped under no_init_weights; from_pretrained ties too
        tokenizer = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except Exception as e:  # transformers and tokenizers raise many types
        raise _wrap_load_error(str(root), e) from e
    model.eval()

    by_id: dict[int, list[str]] = defaultdict(list)
    for n, t in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        by_id[id(t)].append(n)
    persistent = list(model.state_dict())
    aliases = {n: g for g in by_id.values() for n in g if n in persistent}
    aliases = {n: [a for a in persistent if a in aliases[n]] for n in persistent if n in aliases}
    expected = {n: tuple(model.state_dict()[n].shape) for n in persistent}
    present = {n for n in persistent if any(a in where for a in aliases.get(n, [n]))}
    ignore = [*(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    unexpected = [
        k for k in where if k not in expected and not any(re.search(p, k) for p in ignore)
    ]
    check_load_report(
        str(root),
        {
            "missing_keys": sorted(set(expected) - present),
            "unexpected_keys": unexpected,
            "mismatched_keys": [
                k for k, (_, s) in info.items() if k in expected and tuple(s) != expected[k]
            ],
        },
        model,
    )
    lazy = LazyModel(model, tokenizer, None, "", root, where, aliases, size)  # type: ignore[arg-type]
    # Layout discovery runs the model up to block 0 and checks it by its outputs, so it needs
    # real weights there: everything but blocks 1.. is read for it, then given back.
    # The head is not read for it (an untied head of a large vocabulary is hundreds of MB).
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = [n for n, m in model.named_modules() if head is not None and m is head]
    probe = [
        k
        for k in aliases
        if not re.search(r"\.[1-9]\d*\.", k) and not any(k.startswith(p + ".") for p in skip)
    ]
    lazy.materialize("probe", probe)
    try:
        lazy.arch = get_arch(model)
    finally:
        lazy.release("probe")
    lazy.kind = "encoder" if encoder else lazy.arch.kind
    return lazy


@dataclass
class LazyArtifact:
    """A slimline artifact opened the same way: verified (digests, signature) first, then the
    skeleton built from its config on the meta device, and each part's tensors (codec modules
    unpacked, plain tensors, ties) read from ``model.safetensors`` only when asked for. The
    block-streamed evaluation (``slimline.recipe.streamed``) reads a compressed model with it."""

    model: nn.Module
    arch: Arch
    path: Path
    manifest: dict[str, Any]
    _held: dict[str, list[tuple[nn.Module, str, Any, str]]] = field(default_factory=dict)

    def materialize(self, key: str, prefixes: list[str]) -> None:
        """Read the modules and tensors under ``prefixes`` (``""`` = everything) into the
        skeleton; remember them under ``key`` for ``release``."""
        from safetensors import safe_open

        from slimline.artifact.io import _set_tensor
        from slimline.core import get_codec

        pre = tuple(p + "." if p else "" for p in prefixes)
        mods: dict[str, Any] = self.manifest.get("modules") or {}
        tied: dict[str, str] = self.manifest.get("tied") or {}
        reshaped = set(self.manifest.get("reshaped") or [])
        held = self._held.setdefault(key, [])
        codec_names = [n for n in mods if (n + ".").startswith(pre)]
        with safe_open(str(self.path / "model.safetensors"), framework="pt") as f:
            for name in codec_names:
                info = mods[name]
                packed = {k: f.get_tensor(f"{name}.{k}") for k in info["keys"]}
                parent, _, child = name.rpartition(".")
                owner = self.model.get_submodule(parent) if parent else self.model
                held.append((owner, child, owner._modules[child], "module"))
                owner._modules[child] = get_codec(info["codec"]).unpack(packed, info["meta"])
            inside = tuple(n + "." for n in mods)
            plain = [k for k in f.keys() if k.startswith(pre) and not k.startswith(inside)]  # noqa: SIM118
            aliases = {a: s for a, s in tied.items() if a.startswith(pre)}
            for k in [*plain, *aliases.values()]:
                mod_name, _, attr = k.rpartition(".")
                mod = self.model.get_submodule(mod_name) if mod_name else self.model
                is_param = attr in mod._parameters
                cur = (mod._parameters if is_param else mod._buffers).get(attr)
                if cur is not None and cur.device.type != "meta":
                    continue  # read already (a tie's source inside this part)
                held.append((mod, attr, cur, "param" if is_param else "buffer"))
                t = f.get_tensor(k)
                _set_tensor(self.model, k, t, reshaped=k in reshaped)
            for alias, src in aliases.items():
                mod_name, _, attr = alias.rpartition(".")
                mod = self.model.get_submodule(mod_name) if mod_name else self.model
                is_param = attr in mod._parameters
                held.append((mod, attr, (mod._parameters if is_param else mod._buffers)[attr],
                             "param" if is_param else "buffer"))  # fmt: skip
                s_mod, _, s_attr = src.rpartition(".")
                owner = self.model.get_submodule(s_mod) if s_mod else self.model
                value = owner._parameters.get(s_attr)
                _set_tensor(
                    self.model, alias, value if value is not None else owner._buffers[s_attr],
                    reshaped=True,
                )  # fmt: skip

    def release(self, key: str) -> None:
        """Put back what ``materialize(key, ...)`` replaced: the meta skeleton again."""
        for owner, attr, old, what in reversed(self._held.pop(key, [])):
            if what == "module":
                owner._modules[attr] = old
            elif what == "param":
                owner._parameters[attr] = old
            else:
                owner._buffers[attr] = old


def open_lazy_artifact(path: str | Path, *, home: Any = None) -> LazyArtifact:
    """Verify the artifact at ``path`` and open it lazily (nothing but its config is built)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from slimline.artifact.io import _model_class, _no_init
    from slimline.artifact.spec import read_manifest
    from slimline.artifact.verify import verify_artifact

    root = Path(path)
    verify_artifact(root, home=home).raise_for_problems()
    manifest = read_manifest(root)
    config = AutoConfig.from_pretrained(str(root), local_files_only=True, trust_remote_code=False)
    with init_empty_weights(include_buffers=False), _no_init():
        model = _model_class(config)(config)
    model.eval()
    lazy = LazyArtifact(model, None, root, manifest)  # type: ignore[arg-type]
    # the layout is discovered as for a plain model (``open_lazy``): with block 0 and the stem
    # read, the other blocks and the head left on disk
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    blocks = max(lists, key=lambda x: len(x[1]))[0] if lists else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    probe = [f"{blocks}.0"] if blocks else []
    for n, m in model.named_modules():
        inside = blocks is not None and (n == blocks or n.startswith(blocks + "."))
        own = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        if n and own and not inside and m is not head:
            probe.append(n)
    lazy.materialize("probe", probe)
    try:
        lazy.arch = get_arch(model)
    finally:
        lazy.release("probe")
    return lazy
