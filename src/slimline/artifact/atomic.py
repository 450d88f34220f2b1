"""Atomic output directories: write into a temp dir beside the target, rename it into place.

Every directory slimline writes this way is named ``.NAME.tmp-<pid>-<8 hex>`` and holds a
``.slimline-partial`` marker (writer pid and host) until the rename, so a save that was killed
midway leaves something recognisable: the loader refuses it (``is_partial_output``) and the next
save to the same NAME removes it (``clean_stale``), once its writer is provably gone. An
overwrite moves the old output aside as ``.NAME.old-<pid>-<8 hex>`` and drops it after the swap;
if the writer died between the two renames, the next save puts the old output back first.

Only directories that match the pattern for the same NAME are ever touched, and only when the
writer's process is gone (same host) or nothing in them changed for ``STALE_AFTER_S`` seconds.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from slimline.errors import InputError

PARTIAL_MARK = ".slimline-partial"
STALE_AFTER_S = 3600.0  # no marker to ask (or another host's): untouched this long = abandoned
# ".NAME.tmp-1234-0a1b2c3d" (this writer) and ".NAME.tmp-0a1b2c3d" (older slimline versions).
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")


def temp_target(path: str | os.PathLike[str]) -> str | None:
    """The output name a temp/old directory was made for, or None if ``path`` is not one."""
    p = Path(path)
    m = _TEMP.match(p.name)
    if m:
        return m.group("target")
    if (p / PARTIAL_MARK).is_file():
        return p.name
    return None


def is_partial_output(path: str | os.PathLike[str]) -> bool:
    """True for a directory an atomic writer left behind: never a finished output."""
    return temp_target(path) is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _newest_mtime(d: Path) -> float:
    newest = d.lstat().st_mtime
    for root, dirs, files in os.walk(d, followlinks=False):
        for n in [*dirs, *files]:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, n)).st_mtime)
    return newest


def _abandoned(d: Path) -> bool:
    """True when the writer of temp dir ``d`` is provably gone."""
    mark = d / PARTIAL_MARK
    try:
        info = json.loads(mark.read_text())
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict) and info.get("host") == socket.gethostname():
        pid = info.get("pid")
        return isinstance(pid, int) and pid != os.getpid() and not _alive(pid)
    return time.time() - _newest_mtime(d) > STALE_AFTER_S


def clean_stale(out: str | os.PathLike[str]) -> list[Path]:
    """Remove the leftovers of earlier, dead writes to ``out``; restore an old output that a
    killed overwrite had moved aside. Returns the directories removed."""
    out = Path(out)
    parent = out.parent
    if not parent.is_dir():
        return []
    removed: list[Path] = []
    for d in sorted(parent.glob(f".{glob.escape(out.name)}.*-*")):
        m = _TEMP.match(d.name)
        if not m or m.group("target") != out.name or d.is_symlink() or not d.is_dir():
            continue
        if not _abandoned(d):
            continue
        if m.group("kind") == "old" and not out.exists():
            os.replace(d, out)  # the overwrite died between its two renames: undo the first
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def new_temp_dir(out: str | os.PathLike[str]) -> Path:
    """Create the recognisable temp dir for ``out`` (beside it, same filesystem)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    (tmp / PARTIAL_MARK).write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "target": out.name})
    )
    return tmp


def finish(tmp: Path, out: Path, *, replace: bool = False) -> None:
    """Rename ``tmp`` to ``out``; with ``replace`` an existing ``out`` is swapped out first."""
    (tmp / PARTIAL_MARK).unlink(missing_ok=True)
    if out.exists() and replace:
        old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp:`` write into ``tmp``; on success it becomes ``out``, on any
    error (or Ctrl-C) it is removed. Leftovers of earlier killed writes to ``out`` go first."""
    out = Path(out)
    clean_stale(out)
    tmp = new_temp_dir(out)
    try:
        yield tmp
        finish(tmp, out, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def files_in(tmp: Path) -> list[Path]:
    """The files a writer put in ``tmp`` (the partial marker left out)."""
    return [p for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != PARTIAL_MARK]


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full(err: OSError, out: Path) -> InputError:
    """A full disk (or quota) while writing ``out``, as the error a user can act on (the temp
    dir is removed by the writer, so nothing was written)."""
    return InputError(
        f"the disk holding {out.parent} ran out of space while writing {out.name} "
        f"({err.strerror or err}); nothing was written",
        "free space on that disk (or write -o to another one) and run the same command again",
    )
