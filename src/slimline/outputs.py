"""Where a command writes: checked before any work starts, replaced only by rename.

Every command that writes (quantize, prune, export, distill, run, report, cascade --log,
prune-sensitivity --plot) calls ``check_output`` at its entry, before a model is loaded, so a
wrong path costs a second, not a compression run. ``check_output`` never creates or changes
anything the user can see: it refuses a path that exists (unless the caller proves it may
replace it), a path under a file, and a location this process cannot write (probed with a
temp file that is removed at once, so read-only mounts and ACLs count, not just mode bits).

``move_aside`` is the one way slimline replaces a directory it owns: the old one is renamed to
a visible sibling (never deleted), so a mistaken ``--fresh`` costs disk space, not work.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from slimline.errors import InputError

_FIX_WRITABLE = "choose an output path in a directory you can write, or fix its permissions"


def _nearest_existing(p: Path) -> Path:
    for a in (p, *p.parents):
        if a.exists():
            return a
    return Path(os.sep)  # pragma: no cover - the root always exists


def _probe(d: Path, target: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".slimline-probe-", dir=d)
    except OSError as e:
        raise InputError(
            f"cannot write {target}: {d} is not writable ({e.strerror or e})", _FIX_WRITABLE
        ) from e
    os.close(fd)
    os.unlink(name)


def check_output(
    path: str | os.PathLike[str],
    *,
    kind: Literal["dir", "file"] = "dir",
    replace: bool | Callable[[Path], bool] = False,
    what: str = "output",
) -> Path:
    """Refuse an output location that cannot be written, before any work starts.

    ``kind``: what will be written there (``"file"`` refuses an existing directory).
    ``replace``: whether an existing ``path`` may be written over (True: the command appends to
    or resumes it; a callable: only when it returns True for ``path``, e.g. ``is_artifact``).
    Returns ``path`` as a ``Path``. Creates nothing.
    """
    p = Path(path).expanduser()
    if p.exists() or p.is_symlink():
        if kind == "file" and p.is_dir():
            raise InputError(
                f"the {what} {p} is a directory, but a file is written there",
                f"give the path of a file to write, e.g. a new name inside {p}",
            )
        if kind == "dir" and not p.is_dir():
            raise InputError(
                f"the {what} {p} is a file, but a directory is written there",
                "give the path of a new directory",
            )
        allowed = replace(p) if callable(replace) else replace
        if not allowed:
            raise InputError(
                f"the {what} {p} already exists (slimline does not overwrite it)",
                "choose a new output path, or move the old one away yourself",
            )
    if p.exists():
        if p.is_dir():
            _probe(p, p)  # a run dir resumed, a distill dir continued
        elif not os.access(p, os.W_OK):
            raise InputError(f"cannot write {p}: the file is read-only", _FIX_WRITABLE)
        _probe(p.parent, p)  # replacing it renames in its parent
        return p
    base = _nearest_existing(p)
    if not base.is_dir():
        raise InputError(
            f"cannot write {p}: {base} is a file, not a directory",
            "choose an output path whose parent folders are directories",
        )
    _probe(base, p)
    return p


def move_aside(path: str | os.PathLike[str]) -> Path:
    """Rename ``path`` to a visible sibling ``NAME.replaced-<UTC time>`` and return that; nothing
    is deleted (the user removes it when sure)."""
    p = Path(path)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        dest = p.with_name(f"{p.name}.replaced-{stamp}" + (f"-{n}" if n else ""))
        if not dest.exists():
            try:
                os.rename(p, dest)  # not os.replace: never over something that appeared meanwhile
            except FileExistsError:
                continue
            except OSError as e:
                if dest.exists():
                    continue
                raise InputError(f"cannot move {p} aside ({e.strerror or e})", _FIX_WRITABLE) from e
            return dest
    raise InputError(
        f"cannot move {p} aside: too many old copies", f"remove old {p.name}.replaced-*"
    )
