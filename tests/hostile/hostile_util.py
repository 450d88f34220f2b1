"""Helpers shared by the hostile-input tests, under a name no other test directory uses
(several test directories have a ``conftest.py``, so ``from conftest import ...`` is ambiguous
when they are collected together)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (and ``root`` itself) with its content hash: equal snapshots
    mean nothing was written, changed or deleted."""
    snap: dict[str, str] = {}
    if not root.exists():
        return snap
    for p in [root, *sorted(root.rglob("*"))]:
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            snap[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            snap[rel] = "dir"
        else:
            snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def write_recipe(path: Path, model: Path) -> Path:
    """A recipe for the tiny model that runs in a few seconds (one RTN stage, 1 eval window)."""
    path.write_text(
        yaml.safe_dump(
            {
                "name": "hostile",
                "model": str(model),
                "data": {"calibration": {"n": 2, "seq_len": 32}},
                "stages": [{"quant.rtn": {"bits": 8, "group_size": 32}}],
                "eval": {"datasets": ["python-docs"], "windows": 1, "seq_len": 32, "latency": None},
            }
        )
    )
    return path
