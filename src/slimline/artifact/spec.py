"""The artifact format's fixed parts: file names, canonical manifest bytes, digests, and a strict
safetensors header check. Torch-free, so the registry and verification stay light.

See docs/ARTIFACT.md for the format itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

from slimline.errors import IntegrityError

FORMAT = "slimline-artifact"
FORMAT_VERSION = 1
MANIFEST = "slimline.json"
SIGNATURE = "slimline.sig"
WEIGHTS = "model.safetensors"
# In the weights file's safetensors metadata: marks it as written by save_artifact, so a directory
# whose manifest was deleted is still recognised as an artifact (and refused, not loaded as HF).
WEIGHTS_METADATA = {"format": "pt", "slimline": FORMAT}
# Files that can carry a pickle: refused on sight, never opened.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
# Manifest keys the writer owns; a caller's manifest may not set them.
RESERVED_KEYS = frozenset(
    {
        "format",
        "format_version",
        "files",
        "modules",
        "tied",
        "reshaped",
        "environment",
        "parent",
        "tokenizer_class",
    }
)

# safetensors dtype names -> bytes per element (the spec's list).
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors reference limit


def _jsonable(value: Any) -> Any:
    """JSON has no inf/nan: store non-finite floats as the strings "inf", "-inf", "nan" (float()
    reads them back), so a destroyed model's ``ppl = inf`` can still be recorded honestly."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes that are signed and hashed: sorted keys, no whitespace, UTF-8.

    Signing these rather than the file's bytes means re-indenting the file changes nothing,
    while any change of content changes the digest.
    """
    try:
        return json.dumps(
            _jsonable(manifest),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode("utf-8")
    except (TypeError, ValueError) as e:
        from slimline.errors import ConfigError

        raise ConfigError(
            f"the artifact manifest is not plain JSON: {e}",
            "pass only str/int/float/bool/None, lists and dicts in the manifest",
        ) from e


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The artifact's identity: sha256 of its canonical manifest (which lists every file's sha256)."""
    return hashlib.sha256(canonical_bytes(manifest)).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Parse ``slimline.json`` of the artifact at ``path`` (no verification)."""
    p = Path(path) / MANIFEST
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError as e:
        raise IntegrityError(
            f"{path} has no {MANIFEST}: not a slimline artifact",
            "point at a directory written by slimline.artifact.save_artifact",
        ) from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(
            f"{p} is not valid JSON ({e})",
            "the artifact is corrupt: restore it from the registry store or re-save it",
        ) from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise IntegrityError(
            f"{p} is not a slimline manifest (format field is {data.get('format') if isinstance(data, dict) else None!r})",
            "point at a directory written by slimline.artifact.save_artifact",
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise IntegrityError(
            f"{p} has format_version {data.get('format_version')!r}; this slimline reads {FORMAT_VERSION}",
            "load it with the slimline version that wrote it (see environment.slimline in the manifest)",
        )
    return data


def is_artifact(path: str | Path) -> bool:
    """True when ``path`` is a directory holding a slimline manifest (not a verification)."""
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def safetensors_metadata(path: Path) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file's header ({} when unreadable); reads the header only."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _MAX_HEADER:
                return {}
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, struct.error, UnicodeDecodeError, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def artifact_evidence(path: str | Path) -> str | None:
    """Why ``path`` looks like a slimline artifact even without a readable manifest, or None.

    A directory with this evidence is loaded as an artifact (verified) or not at all: deleting
    ``slimline.json`` must not turn a refused, tampered artifact into a plain HF directory."""
    p = Path(path)
    if (p / MANIFEST).exists():
        return f"it has {MANIFEST}"
    if (p / SIGNATURE).exists():
        return f"it holds an artifact signature ({SIGNATURE})"
    if (p / WEIGHTS).is_file() and safetensors_metadata(p / WEIGHTS).get("slimline") == FORMAT:
        return f"its {WEIGHTS} was written by slimline's artifact writer"
    return None


def check_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Validate a safetensors file's header against its size before any tensor is read.

    Checks: header length fits the file, header is a JSON object, each dtype is known, each
    tensor's byte range equals its shape x dtype size, ranges are in bounds, do not overlap and
    cover the data section exactly (no hidden bytes). Returns the tensor entries.
    """
    size = path.stat().st_size
    fix = "the weights file is corrupt or crafted: restore the artifact from the registry store or re-save it"
    if size < 8:
        raise IntegrityError(f"{path.name} is truncated ({size} bytes, no header)", fix)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER or 8 + n > size:
            raise IntegrityError(
                f"{path.name} header claims {n} bytes but the file has {size} bytes in all", fix
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"{path.name} header is not valid JSON ({e})", fix) from e
    if not isinstance(header, dict):
        raise IntegrityError(f"{path.name} header is not a JSON object", fix)
    data_len = size - 8 - n
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    spans = []
    for name, e in entries.items():
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
            raise IntegrityError(f"{path.name}: tensor {name!r} has a malformed header entry", fix)
        if e["dtype"] not in _DTYPE_BYTES:
            raise IntegrityError(
                f"{path.name}: tensor {name!r} has unknown dtype {e['dtype']!r}", fix
            )
        shape, offs = e["shape"], e["data_offsets"]
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) for o in offs)
        ):
            raise IntegrityError(
                f"{path.name}: tensor {name!r} has a malformed shape or offsets", fix
            )
        begin, end = offs
        want = math.prod(shape) * _DTYPE_BYTES[e["dtype"]]
        if not 0 <= begin <= end <= data_len:
            raise IntegrityError(
                f"{path.name}: tensor {name!r} lies at bytes {begin}..{end} but the data section has {data_len} bytes (file truncated or header lying)",
                fix,
            )
        if end - begin != want:
            raise IntegrityError(
                f"{path.name}: tensor {name!r} claims shape {shape} {e['dtype']} ({want} bytes) but spans {end - begin} bytes",
                fix,
            )
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise IntegrityError(
                f"{path.name}: tensor {name!r} starts at byte {begin}, expected {pos} (overlap or gap)",
                fix,
            )
        pos = end
    if pos != data_len:
        raise IntegrityError(
            f"{path.name}: tensors cover {pos} bytes but the data section has {data_len} (trailing bytes)",
            fix,
        )
    return entries
