"""Write and read artifacts: atomic, signed saves; loads that verify before they build anything.

Plain tensors go to ``model.safetensors`` under their state-dict names; a module that is a
``slimline.core.Codec`` (packed ints, bitmask-sparse weights) is stored as its ``pack()`` tensors
under ``<module>.<key>`` with its JSON meta in the manifest, and rebuilt with ``unpack``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import os
import platform
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimline.artifact import atomic as _atomic
from slimline.artifact import keys as _keys
from slimline.artifact.spec import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    RESERVED_KEYS,
    SIGNATURE,
    WEIGHTS,
    WEIGHTS_METADATA,
    canonical_bytes,
    is_artifact,
    manifest_digest,
    read_manifest,
    sha256_file,
)
from slimline.artifact.verify import signature_record, verify_artifact
from slimline.core import Codec, get_codec, set_submodule
from slimline.errors import ConfigError, InputError, ModelLoadError, NonFiniteError
from slimline.progress import track

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt")


@dataclass
class ArtifactInfo:
    """What ``save_artifact`` wrote: where, its digest (sha256 of the canonical manifest), who signed."""

    path: Path
    digest: str
    key_id: str
    size_bytes: int
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes (manifest + sig included)
    manifest: dict[str, Any] = field(default_factory=dict)


def environment(seed: int | None = None) -> dict[str, Any]:
    """Versions and machine, so a figure can be traced to the software that produced it."""
    import safetensors
    import transformers

    try:
        from importlib.metadata import version

        slim = version("slimline")
    except Exception:  # not installed as a distribution (source checkout)
        slim = "unknown"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "slimline": slim,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "seed": seed,
    }


def _codec_modules(model: nn.Module) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if name and isinstance(mod, Codec) and getattr(mod, "codec", ""):
            if any(name.startswith(p + ".") for p in out):
                continue  # inside a codec module: its parent's pack() covers it
            out[name] = mod
    return out


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def _resolve_parent(parent: str | os.PathLike[str] | None) -> str | None:
    if parent is None:
        return None
    if is_artifact(parent):
        return manifest_digest(read_manifest(parent))
    s = str(parent)
    if _HEX64.match(s):
        return s
    raise ConfigError(
        f"parent {s!r} is neither an artifact directory nor a 64-hex digest",
        "pass the parent's artifact path or its digest (ArtifactInfo.digest)",
    )


def _expected_shapes(config: Any, cls: type) -> dict[str, tuple[int, ...]]:
    """Parameter shapes the config alone would build (meta device: no memory, no init)."""
    from accelerate import init_empty_weights

    try:
        with init_empty_weights(include_buffers=True), _no_init():
            ref = cls(copy.deepcopy(config))
    except Exception:  # a class we cannot rebuild from its config: the loader will say so
        return {}
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def _tensors_for_save(
    model: nn.Module, keep: Any = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
    """What goes into the weights file: tensors, codec modules, ties. ``keep(name)`` limits it to
    part of the model (the streamed writer saves one block at a time; the rest is on meta)."""
    codecs = _codec_modules(model)
    if keep is not None:
        codecs = {n: m for n, m in codecs.items() if keep(n)}
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, Any] = {}
    for name, mod in track(list(codecs.items()), "pack modules"):
        packed, meta = mod.pack()
        json.dumps(meta, allow_nan=False)  # meta must be plain JSON; raises early otherwise
        for k, t in packed.items():
            tensors[f"{name}.{k}"] = t.detach().cpu().contiguous()
        modules[name] = {"codec": mod.codec, "meta": meta, "keys": sorted(packed)}
    prefixes = list(codecs)
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for key, t in model.state_dict().items():
        if _under(key, prefixes) or (keep is not None and not keep(key)):
            continue
        if t.device.type == "meta":
            raise ConfigError(
                f"tensor {key} is on the meta device (never materialised)",
                "load the weights into the model (e.g. accelerate's dispatch) before saving",
            )
        if key in tensors:
            raise ConfigError(f"tensor name {key} is used twice", "rename the codec's packed keys")
        ptr = t.untyped_storage().data_ptr()
        sig = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if sig in seen:  # the same tensor under two names (tied embeddings): store once
            tied[key] = seen[sig]
            continue
        seen[sig] = key
        t = t.detach().cpu()
        # A view sharing storage with another saved tensor is copied: safetensors refuses aliases.
        tensors[key] = t.clone() if ptr in storages else t.contiguous()
        storages.add(ptr)
    return tensors, modules, tied


def _check_finite_tensors(tensors: dict[str, torch.Tensor]) -> None:
    """Never sign NaN/Inf weights: a signed artifact must be a model, not a verified wreck."""
    from slimline.models.checks import count_nonfinite

    for name, t in tensors.items():
        n = count_nonfinite(t) if t.is_floating_point() else 0
        if n:
            raise NonFiniteError(
                f"tensor {name} holds {n:,} non-finite value(s) (NaN/Inf): refusing to save it as an artifact",
                "find the step that produced them (the input model, or the technique applied); "
                "nothing was written",
            )


# safetensors writes tensors by dtype (its enum order, descending) then by name, offsets back to
# back, JSON without spaces padded to 8 bytes; its metadata map in hash order, which made two saves
# of one model differ by process: we write that map sorted, so a save is reproducible and a
# streamed save (slimline.artifact.stream) is byte-identical to an in-memory one.
_ST_ORDER = [
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
    "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64",
]  # fmt: skip
_ST_RANK = {d: i for i, d in enumerate(_ST_ORDER)}
_ST_DTYPES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
    torch.uint16: "U16", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
    torch.uint32: "U32", torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
    torch.uint64: "U64", torch.float8_e5m2: "F8_E5M2", torch.float8_e4m3fn: "F8_E4M3",
}  # fmt: skip


def write_safetensors(
    path: Path,
    entries: dict[str, tuple[str, list[int], int]],
    chunks: Any,
    metadata: dict[str, str] = WEIGHTS_METADATA,
) -> None:
    """Write a safetensors file of tensors ``{name: (dtype, shape, nbytes)}``, each one's bytes
    from ``chunks(name)`` (an iterable of buffers), one tensor in memory at a time."""
    order = sorted(entries, key=lambda k: (-_ST_RANK[entries[k][0]], k))
    head: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    pos = 0
    for k in order:
        dtype, shape, nbytes = entries[k]
        head[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for k in order:
            n = 0
            for buf in chunks(k):
                f.write(buf)
                n += memoryview(buf).nbytes
            if n != entries[k][2]:
                raise ConfigError(
                    f"tensor {k} gave {n} bytes, its header says {entries[k][2]}",
                    "report this as a bug: the weights file was not written",
                )


def _save_args(
    model: Any, tokenizer: Any, manifest: dict[str, Any] | None
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(model, tokenizer, caller's manifest)`` from what ``save_artifact`` accepts, refused early."""
    if not isinstance(model, nn.Module) and hasattr(model, "model"):  # a LoadedModel
        lm = model
        model, tokenizer = lm.model, tokenizer if tokenizer is not None else lm.tokenizer
        manifest = {"kind": lm.kind, **(manifest or {})}
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise ConfigError(
            f"save_artifact needs a transformers model, got {type(model).__name__}",
            "pass a PreTrainedModel (LoadedModel.model) or a LoadedModel",
        )
    user = dict(manifest or {})
    clash = RESERVED_KEYS & user.keys()
    if clash:
        raise ConfigError(
            f"manifest fields {sorted(clash)} are written by save_artifact itself",
            "drop them from `manifest`; pass the parent with parent=",
        )
    return model, tokenizer, user


def _prepare_out(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    out = Path(out_dir)
    # Leftovers of an earlier killed save to this same output go first (an overwrite that died
    # between its two renames gets its old output back, so the check below sees it).
    _atomic.clean_stale(out)
    if out.exists() and not (overwrite and is_artifact(out)):
        raise InputError(
            f"{out} already exists",
            "choose a new directory (from Python, save_artifact(..., overwrite=True) replaces an "
            "existing artifact, never anything else)",
        )
    return out


def save_artifact(
    model: Any,
    tokenizer: Any,
    out_dir: str | os.PathLike[str],
    *,
    manifest: dict[str, Any] | None = None,
    parent: str | os.PathLike[str] | None = None,
    key: Any = None,
    overwrite: bool = False,
    home: str | os.PathLike[str] | None = None,
) -> ArtifactInfo:
    """Save ``model`` (+ ``tokenizer``, may be None) as a signed artifact at ``out_dir``.

    ``manifest``: the caller's fields (recipe, stages, metrics, data_fingerprint, seed, kind, any
    other JSON); the writer adds format, files, modules, environment and parent. ``parent``: an
    artifact path or digest. ``key``: None = this user's key, an Ed25519PrivateKey or a PEM path.
    Atomic: everything is written to a temp dir beside ``out_dir`` and renamed at the end, so an
    interrupted save leaves nothing behind. Accepts a ``slimline.models.LoadedModel`` too.
    """
    model, tokenizer, user = _save_args(model, tokenizer, manifest)
    out = _prepare_out(out_dir, overwrite)
    parent_digest = _resolve_parent(parent)
    signer = _keys.load_private_key(key, home)

    tensors, modules, tied = _tensors_for_save(model)
    _check_finite_tensors(tensors)

    def write_weights(path: Path) -> None:
        entries = {
            k: (_ST_DTYPES[t.dtype], list(t.shape), t.numel() * t.element_size())
            for k, t in tensors.items()
        }

        def chunks(name: str) -> Any:
            yield tensors[name].reshape(-1).contiguous().view(torch.uint8).numpy()

        write_safetensors(path, entries, chunks)

    tmp = _atomic.new_temp_dir(out)
    try:
        return write_artifact(
            tmp,
            out,
            model,
            tokenizer,
            user,
            parent_digest=parent_digest,
            signer=signer,
            shapes={k: tuple(t.shape) for k, t in tensors.items()},
            modules=modules,
            tied=tied,
            write_weights=write_weights,
        )
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in _atomic.NO_SPACE:
            raise _atomic.disk_full(e, out) from e
        raise


def write_artifact(
    tmp: Path,
    out: Path,
    model: nn.Module,
    tokenizer: Any,
    user: dict[str, Any],
    *,
    parent_digest: str | None,
    signer: Any,
    shapes: dict[str, tuple[int, ...]],
    modules: dict[str, Any],
    tied: dict[str, str],
    write_weights: Any,
) -> ArtifactInfo:
    """Fill the temp dir ``tmp`` (config, tokenizer, weights by ``write_weights(path)``, manifest,
    signature) and rename it to ``out``. Shared by ``save_artifact`` and the streamed writer
    (``slimline.artifact.stream``), which appends the weights block by block; the caller removes
    ``tmp`` on failure. ``shapes``: every stored tensor's shape (for ``reshaped``)."""
    user = dict(user)
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    expected = _expected_shapes(config, type(model))
    reshaped = sorted(k for k, s in shapes.items() if k in expected and expected[k] != tuple(s))
    kind = user.pop("kind", None) or (
        "causal-lm" if type(model).__name__.endswith("ForCausalLM") else "encoder"
    )
    config.save_pretrained(tmp)
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        gen.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    write_weights(tmp / WEIGHTS)
    return _seal(
        tmp,
        out,
        {
            **user,
            "kind": kind,
            "tokenizer_class": type(tokenizer).__name__ if tokenizer is not None else None,
            "modules": modules,
            "tied": tied,
            "reshaped": reshaped,
        },
        parent_digest,
        signer,
    )


def _seal(
    tmp: Path, out: Path, fields: dict[str, Any], parent_digest: str | None, signer: Any
) -> ArtifactInfo:
    """Hash every file in ``tmp``, write the signed manifest (``fields`` + format, parent,
    environment, files) and rename ``tmp`` to ``out``: the end of every artifact save."""
    files = {}
    for p in track(_atomic.files_in(tmp), "hash files"):
        rel = p.relative_to(tmp).as_posix()
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    full = {
        **fields,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": fields.get("created_at")
        or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "parent": parent_digest,
        "environment": environment(fields.get("seed")),
        "files": files,
    }
    full = json.loads(canonical_bytes(full))  # what is stored is exactly what is signed
    (tmp / MANIFEST).write_text(
        json.dumps(full, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )
    sig = signature_record(full, signer)
    (tmp / SIGNATURE).write_text(json.dumps(sig, indent=2) + "\n")
    # overwrite: the old one is moved aside first and dropped only after the swap
    _atomic.finish(tmp, out, replace=True)
    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    return ArtifactInfo(
        path=out,
        digest=manifest_digest(full),
        key_id=sig["key_id"],
        size_bytes=sum(sizes.values()),
        files=sizes,
        manifest=full,
    )


EXPORT_KIND = "export/"  # manifest kind of an engine file packed as an artifact: export/gguf


def save_export_artifact(
    files: dict[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    fmt: str,
    manifest: dict[str, Any] | None = None,
    parent: str | os.PathLike[str] | None = None,
    key: Any = None,
    overwrite: bool = False,
    home: str | os.PathLike[str] | None = None,
) -> ArtifactInfo:
    """Pack an engine's files (a GGUF and its export record, an ONNX graph) as a signed artifact
    of kind ``export/<fmt>`` whose parent is the artifact it was exported from, so the registry
    keeps it as a child version (lineage, digests, rollback) like any other.

    ``files``: name in the artifact -> source file (copied). Atomic like ``save_artifact``.
    """
    user = dict(manifest or {})
    bad = sorted(RESERVED_KEYS & set(user))
    if bad:
        raise ConfigError(f"manifest keys {bad} are written by slimline", "remove them")
    out = _prepare_out(out_dir, overwrite)
    parent_digest = _resolve_parent(parent)
    signer = _keys.load_private_key(key, home)
    tmp = _atomic.new_temp_dir(out)
    try:
        for name, src in files.items():
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ConfigError(
                    f"export file name {name!r} leaves the artifact", "use a plain name"
                )
            shutil.copyfile(src, tmp / name)
        return _seal(tmp, out, {**user, "kind": EXPORT_KIND + fmt}, parent_digest, signer)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _model_class(config: Any) -> type:
    import transformers

    for name in config.architectures or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls
    raise ModelLoadError(
        f"config.json names architectures {config.architectures}, none of which this transformers ({transformers.__version__}) provides",
        "upgrade transformers, or re-save the artifact from a model class transformers ships",
    )


def _no_init() -> Any:
    """Skip random initialisation of weights that are about to be replaced (a third of load time)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older/newer transformers without it: initialising is only slower
        return contextlib.nullcontext()
    return no_init_weights()


def _set_tensor(
    model: nn.Module, key: str, value: torch.Tensor | nn.Parameter, *, reshaped: bool
) -> None:
    mod_name, _, attr = key.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if attr in mod._parameters:
        cur = mod._parameters[attr]
        if cur is not None and tuple(cur.shape) != tuple(value.shape) and not reshaped:
            raise ModelLoadError(
                f"tensor {key} has shape {tuple(value.shape)} but config.json builds {tuple(cur.shape)}",
                "the artifact's config and weights disagree: re-save it from the model",
            )
        if not isinstance(value, nn.Parameter):
            value = nn.Parameter(
                value,
                requires_grad=value.is_floating_point() and (cur is None or cur.requires_grad),
            )
        mod._parameters[attr] = value
        if reshaped:  # structured edits the config cannot express: keep the module's fields true
            if isinstance(mod, nn.Linear) and attr == "weight":
                mod.out_features, mod.in_features = value.shape
            elif isinstance(mod, nn.Embedding) and attr == "weight":
                mod.num_embeddings, mod.embedding_dim = value.shape
            elif isinstance(mod, nn.LayerNorm) and attr == "weight":
                mod.normalized_shape = tuple(value.shape)
    elif attr in mod._buffers:
        mod._buffers[attr] = value
    else:
        raise ModelLoadError(
            f"model has no tensor {key}", "the artifact's config and weights disagree: re-save it"
        )


def load_artifact(
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    trusted_keys: Any = None,
    home: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Verify, then build: returns ``(model, tokenizer_or_None, manifest)``.

    With ``verify`` (the default) every file digest and the signature (by a trusted key, see
    ``slimline.artifact.keys``) are checked before anything is built; a failure raises
    ``IntegrityError`` naming the file. Pickle-capable files are refused even with verify=False.
    The model is built on the meta device from config.json, codec modules are rebuilt with
    ``unpack``, and plain tensors are assigned strictly (missing or unexpected names raise).
    """
    root = Path(path)
    report = verify_artifact(
        root, trusted_keys=trusted_keys, home=home, check_signature=verify, check_digests=verify
    )
    report.raise_for_problems()
    manifest = read_manifest(root)
    kind = str(manifest.get("kind") or "")
    if kind.startswith(EXPORT_KIND):
        fmt = kind.removeprefix(EXPORT_KIND)
        raise ConfigError(
            f"{root} is a {fmt} export (an engine file, not torch weights)",
            f"run it in its engine: slimline profile {root} --engine "
            f"{'llamacpp' if fmt == 'gguf' else 'onnxruntime'}; or load its parent artifact",
        )

    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            str(root), local_files_only=True, trust_remote_code=False
        )
    except Exception as e:  # transformers raises OSError/ValueError/KeyError for a bad config
        raise ModelLoadError(
            f"{root}/config.json cannot be read: {e}", "re-save the artifact from the model"
        ) from e
    cls = _model_class(config)
    with init_empty_weights(include_buffers=False), _no_init():
        model = cls(config)
    tensors = load_file(str(root / WEIGHTS)) if (root / WEIGHTS).exists() else {}

    modules: dict[str, Any] = manifest.get("modules") or {}
    for name, info in track(sorted(modules.items()), "unpack modules"):
        codec = get_codec(info["codec"])
        try:
            packed = {k: tensors.pop(f"{name}.{k}") for k in info["keys"]}
        except KeyError as e:
            raise ModelLoadError(
                f"{WEIGHTS} lacks tensor {name}.{e.args[0]} of codec module {name}",
                "the artifact is incomplete: re-save it from the model",
            ) from e
        set_submodule(model, name, codec.unpack(packed, info["meta"]))

    prefixes = list(modules)
    tied: dict[str, str] = manifest.get("tied") or {}
    expected = {k for k in model.state_dict() if not _under(k, prefixes)}
    provided = set(tensors) | set(tied)
    missing, unexpected = sorted(expected - provided), sorted(provided - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"{root}: weights do not match the model config.json builds (missing {missing[:5]}, unexpected {unexpected[:5]})",
            "re-save the artifact from the model; do not mix config.json and weights of different models",
        )
    reshaped = set(manifest.get("reshaped") or [])
    for key, t in tensors.items():
        _set_tensor(model, key, t, reshaped=key in reshaped)
    for alias, src in sorted(tied.items()):
        mod_name, _, attr = src.rpartition(".")
        src_mod = model.get_submodule(mod_name) if mod_name else model
        shared = src_mod._parameters.get(attr)
        if shared is None:
            shared = src_mod._buffers[attr]
        _set_tensor(model, alias, shared, reshaped=True)
    left = [
        n
        for n, t in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
        if t.device.type == "meta"
    ]
    if left:
        raise ModelLoadError(
            f"{root}: tensors {left[:5]} were never loaded",
            "the artifact is incomplete: re-save it from the model",
        )
    if (root / "generation_config.json").exists():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(root), local_files_only=True)
    model.to(device)
    model.eval()
    tokenizer = None
    if any((root / f).exists() for f in _TOKENIZER_FILES):
        import transformers

        # The class that saved it, not AutoTokenizer's guess: AutoTokenizer picks the class from
        # config.json's model_type, and e.g. Qwen2Tokenizer re-tokenizes SmolLM2's vocabulary
        # differently ("\n    " becomes 2 tokens instead of 1).
        tcls = getattr(transformers, str(manifest.get("tokenizer_class")), None)
        if not (isinstance(tcls, type) and hasattr(tcls, "from_pretrained")):
            tcls = transformers.AutoTokenizer
        tokenizer = tcls.from_pretrained(str(root), local_files_only=True, trust_remote_code=False)
    return model, tokenizer, manifest
