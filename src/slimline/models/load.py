"""Load any model slimline works on, from whatever the user points at, without unpickling."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimline.errors import IntegrityError, ModelLoadError, UnsupportedArchitectureError
from slimline.models.arch import Arch, get_arch
from slimline.models.bundled import BUNDLED, _drop_gguf_marker, bundled_path
from slimline.models.checks import (
    check_finite,
    check_load_report,
    check_remote_code,
    remote_code_allowed,
)

log = logging.getLogger("slimline")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
)


@dataclass
class LoadedModel:
    """A model with what every technique needs beside it."""

    model: nn.Module
    tokenizer: Any
    arch: Arch
    kind: str  # "causal-lm" | "encoder"
    source: str
    path: Path | None = None
    manifest: dict[str, Any] | None = None  # set when loaded from a slimline artifact
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        return self.model.config


def _is_encoder_config(cfg: dict[str, Any]) -> bool:
    return cfg.get("model_type") in {"bert"} and not any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in cfg.get("architectures") or []
    )


def _check_no_pickle(path: Path, allow_unsafe_pickle: bool) -> None:
    has_safe = any(path.glob("*.safetensors"))
    pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles and not has_safe and not allow_unsafe_pickle:
        raise ModelLoadError(
            f"{path} holds only pickle weights ({', '.join(sorted(pickles))}); loading them can run arbitrary code",
            "convert them to safetensors, or pass allow_unsafe_pickle=True to load_model if you trust the file",
        )


def _wrap_load_error(spec: str, err: Exception) -> ModelLoadError:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "not supported" in msg.lower() and "architecture" in msg.lower():
        return UnsupportedArchitectureError(
            f"cannot load {spec}: {msg}",
            "convert the model to a Hugging Face directory of a supported family (llama, mistral, qwen2, gpt2, opt, bert)",
        )
    return ModelLoadError(
        f"cannot load {spec}: {msg}",
        "check that it is a complete Hugging Face model directory or a GGUF file",
    )


def _refuse_unfinished_or_unsigned(path: Path) -> None:
    """A temp dir of an interrupted save, or an artifact without its manifest, is never loaded
    (as a plain HF directory it would load unverified, possibly half-written weights)."""
    from slimline.artifact.atomic import temp_target
    from slimline.artifact.spec import MANIFEST, artifact_evidence

    target = temp_target(path)
    if target is not None:
        raise ModelLoadError(
            f"{path} is an unfinished save of {target!r} (the temporary directory a save writes "
            "before renaming it into place): it is never loaded",
            f"load {path.parent / target} if that save finished, or run the save again "
            "(it removes this leftover)",
        )
    why = artifact_evidence(path)
    if why is not None and not (path / MANIFEST).exists():
        raise IntegrityError(
            f"{path} looks like a slimline artifact ({why}) but has no {MANIFEST}: its weights "
            "cannot be verified, so it is not loaded",
            "restore the artifact from where it came from (the registry store or its producer), "
            "or re-save it from the model",
        )


def _load_hf_dir(
    path: Path,
    source: str,
    *,
    allow_unsafe_pickle: bool,
    dtype: torch.dtype,
    task: str | None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    cfg_file = path / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(
            f"{cfg_file} is not a readable JSON config ({e})",
            "point at a Hugging Face model directory",
        ) from e
    if not isinstance(cfg, dict):
        raise ModelLoadError(
            f"{cfg_file} is not a JSON object", "point at a Hugging Face model directory"
        )
    _check_no_pickle(path, allow_unsafe_pickle)
    check_remote_code(path, cfg, trust_remote_code)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:4])}, ...)",
            "save the tokenizer beside the weights: tokenizer.save_pretrained(DIR)",
        )
    from slimline.models.lazy import check_dense_dtypes

    check_dense_dtypes(path, cfg)  # int8 / float8 codes in a dense checkpoint: refused
    encoder = task == "encoder" or (task is None and _is_encoder_config(cfg))
    cls = AutoModel if encoder else AutoModelForCausalLM
    trust = remote_code_allowed(trust_remote_code)
    try:
        model, info = cls.from_pretrained(
            str(path),
            dtype=dtype,
            use_safetensors=not allow_unsafe_pickle or None,
            local_files_only=True,
            trust_remote_code=trust,
            output_loading_info=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust
        )
    except Exception as e:  # transformers, safetensors and tokenizers raise many types
        raise _wrap_load_error(str(path), e) from e
    check_load_report(str(path), info, model)
    model.eval()
    arch = get_arch(model)
    return LoadedModel(model, tokenizer, arch, "encoder" if encoder else arch.kind, source, path)


def _load_gguf(path: Path, source: str, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise ModelLoadError("reading GGUF files needs the gguf package", "pip install gguf") from e
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(
                f"{path} is not a GGUF file (bad magic bytes)",
                "point at a .gguf file or a model directory",
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name, trust_remote_code=False
        )
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path.parent),
            gguf_file=path.name,
            dtype=dtype,
            trust_remote_code=False,
            output_loading_info=True,
        )
    except Exception as e:  # transformers and gguf raise many types
        raise _wrap_load_error(str(path), e) from e
    check_load_report(str(path), info, model)
    _drop_gguf_marker(model)
    model.eval()
    return LoadedModel(model, tokenizer, get_arch(model), "causal-lm", source, path)


def load_model(
    spec: str | os.PathLike[str],
    *,
    task: str | None = None,
    allow_unsafe_pickle: bool = False,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
) -> LoadedModel:
    """Load ``spec``: a bundled name, a slimline artifact, an HF directory, a GGUF file, a
    sentence-transformers directory, or a model id already in the local HF cache (offline).

    ``task`` forces "causal-lm" or "encoder" where the config alone does not say.

    Every path refuses, naming the tensors: weights missing from the files (transformers would
    fill them with random values) or left over, and NaN/Inf weights. A temp dir of an
    interrupted save and an artifact without its manifest are refused. A model whose config asks
    to run its own Python code (``auto_map``) is refused unless ``trust_remote_code=True`` (or
    ``SLIMLINE_TRUST_REMOTE_CODE=1``) is set on purpose; pickle files need ``allow_unsafe_pickle``.
    """
    lm = _load(
        str(spec),
        task=task,
        allow_unsafe_pickle=allow_unsafe_pickle,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
    )
    check_finite(lm.model, str(lm.path or lm.source))
    return lm


def _load(
    s: str,
    *,
    task: str | None,
    allow_unsafe_pickle: bool,
    trust_remote_code: bool,
    dtype: torch.dtype,
) -> LoadedModel:
    if s in BUNDLED:
        lm = _load_hf_dir(
            bundled_path(s), s, allow_unsafe_pickle=False, dtype=dtype, task=BUNDLED[s].kind
        )
        lm.kind = BUNDLED[s].kind
        return lm
    path = Path(s).expanduser()
    if path.exists():
        if path.is_dir():
            _refuse_unfinished_or_unsigned(path)
            if (path / "slimline.json").exists():
                from slimline.artifact import load_artifact

                model, tokenizer, manifest = load_artifact(path)
                model.eval()
                arch = get_arch(model)
                kind = manifest.get("kind") or arch.kind
                return LoadedModel(model, tokenizer, arch, kind, s, path, manifest=manifest)
            if (path / "config.json").exists():
                return _load_hf_dir(
                    path,
                    s,
                    allow_unsafe_pickle=allow_unsafe_pickle,
                    dtype=dtype,
                    task=task,
                    trust_remote_code=trust_remote_code,
                )
            raise ModelLoadError(
                f"{path} has no config.json: not a model directory",
                "point at a Hugging Face model directory, a GGUF file or a slimline artifact",
            )
        if path.suffix.lower() == ".gguf":
            return _load_gguf(path, s, dtype)
        if path.suffix in PICKLE_SUFFIXES:
            raise ModelLoadError(
                f"{path} is a pickle file; slimline never unpickles weights",
                "convert it to safetensors inside a Hugging Face directory",
            )
        raise ModelLoadError(
            f"{path} is not a model: expected a directory, a .gguf file or a bundled name",
            f"bundled names: {', '.join(BUNDLED)}",
        )
    looks_like_path = (
        s.startswith((".", "/", "~"))
        or s.endswith((".gguf", ".safetensors"))
        or (os.sep in s and s.count("/") > 1)
    )
    if not looks_like_path and "/" in s:
        return _load_from_hf_cache(
            s,
            allow_unsafe_pickle=allow_unsafe_pickle,
            dtype=dtype,
            task=task,
            trust_remote_code=trust_remote_code,
        )
    raise ModelLoadError(
        f"model {s!r} not found: no such path, bundled name or cached model id",
        f"bundled names: {', '.join(BUNDLED)}; or a path to a model directory / .gguf file",
    )


def _load_from_hf_cache(model_id: str, **kw: Any) -> LoadedModel:
    from huggingface_hub import snapshot_download

    try:
        # Read the cache location at call time (huggingface_hub fixes its default at import).
        cache = os.environ.get("HF_HUB_CACHE") or (
            os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None
        )
        path = Path(snapshot_download(model_id, local_files_only=True, cache_dir=cache))
    except Exception as e:  # huggingface_hub raises several unrelated types for "not cached"
        raise ModelLoadError(
            f"{model_id!r} is not in the local Hugging Face cache and slimline does not download at run time",
            f"download it once elsewhere (huggingface-cli download {model_id}) or point at a local directory",
        ) from e
    lm = _load_hf_dir(path, model_id, **kw)
    return lm
