"""Calibration activations that follow the block, not the model: a bounded buffer spilling to disk.

The engine keeps every calibration batch's hidden states for the block in hand (its inputs, and
the outputs that become the next block's inputs): at 128 x 512 tokens that is 2 x 151 MB for
SmolLM2 and 2 x 1 GB for a 2048-wide model, the largest thing in memory once the weights stream.
Under ``activation_limit(mb)`` (or ``SLIMLINE_ACT_LIMIT_MB``) the batches that would push the
resident total over the limit are written to a temp dir (safetensors, exact bytes) and read back
one at a time when iterated; the dir is removed when the run ends. ``ActivationStats`` reports
the peak resident bytes and how much went to disk.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from slimline.errors import ConfigError

LIMIT_ENV = "SLIMLINE_ACT_LIMIT_MB"


@dataclass
class ActivationStats:
    """The budget every buffer of one calibration run shares, and what it measured."""

    limit_bytes: int | None
    resident_bytes: int = 0
    peak_resident_bytes: int = 0
    spilled_bytes: int = 0  # total written to disk over the run
    spill_dir: Path | None = None

    def summary(self) -> dict[str, Any]:
        mb = 2**20
        return {
            "activation_limit_mb": (
                None if self.limit_bytes is None else round(self.limit_bytes / mb, 4)
            ),
            "activation_peak_mb": round(self.peak_resident_bytes / mb, 2),
            "activation_spilled_mb": round(self.spilled_bytes / mb, 2),
        }

    def _dir(self) -> Path:
        if self.spill_dir is None:
            self.spill_dir = Path(tempfile.mkdtemp(prefix="slimline-activations-"))
        return self.spill_dir

    def cleanup(self) -> None:
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None


_CURRENT: contextvars.ContextVar[ActivationStats | None] = contextvars.ContextVar(
    "slimline_activation_stats", default=None
)


def limit_from_env() -> float | None:
    """The limit in MB from ``SLIMLINE_ACT_LIMIT_MB`` (unset: None), refused when not positive."""
    raw = os.environ.get(LIMIT_ENV)
    if not raw:
        return None
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if mb <= 0:
        raise ConfigError(
            f"{LIMIT_ENV}={raw!r} is not a positive number of megabytes",
            f"set {LIMIT_ENV} to e.g. 512, or unset it",
        )
    return mb


@contextlib.contextmanager
def activation_limit(mb: float | None) -> Iterator[ActivationStats]:
    """Bound the calibration activations of every ``run_blocks`` inside to ``mb`` megabytes
    (None: unbounded, still measured). Yields the stats; the spill dir is removed on exit."""
    if mb is not None and mb <= 0:
        raise ConfigError(f"activation limit {mb} MB is not positive", "pass e.g. 512, or None")
    stats = ActivationStats(None if mb is None else int(mb * 2**20))
    token = _CURRENT.set(stats)
    try:
        yield stats
    finally:
        _CURRENT.reset(token)
        stats.cleanup()


@contextlib.contextmanager
def run_stats() -> Iterator[ActivationStats]:
    """The stats of the enclosing ``activation_limit``, or a fresh one (env limit) for this run."""
    cur = _CURRENT.get()
    if cur is not None:
        yield cur
        return
    with activation_limit(limit_from_env()) as stats:
        yield stats


def _forget(stats: ActivationStats, resident: list[int], files: list[Path]) -> None:
    stats.resident_bytes -= sum(resident)
    resident.clear()
    for f in files:
        with contextlib.suppress(OSError):
            f.unlink()


class ActivationBuffer:
    """A list of per-batch tensors, kept in memory within the shared budget, on disk beyond it."""

    def __init__(self, stats: ActivationStats):
        self.stats = stats
        self._items: list[torch.Tensor | Path] = []
        self._resident: list[int] = []
        self._files: list[Path] = []
        self._done = weakref.finalize(self, _forget, stats, self._resident, self._files)

    def append(self, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        s = self.stats
        if s.limit_bytes is not None and s.resident_bytes + n > s.limit_bytes and t.is_cpu:
            from safetensors.torch import save_file

            f = s._dir() / f"{uuid.uuid4().hex}.safetensors"
            save_file({"x": t.contiguous()}, str(f))
            self._items.append(f)
            self._files.append(f)
            s.spilled_bytes += n
            return
        self._items.append(t)
        self._resident.append(n)
        s.resident_bytes += n
        s.peak_resident_bytes = max(s.peak_resident_bytes, s.resident_bytes)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self._items[i]
        if isinstance(item, Path):
            from safetensors.torch import load_file

            return load_file(str(item))["x"]
        return item

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self._items)):
            yield self[i]

    def close(self) -> None:
        """Drop the tensors now (the next block's inputs replace them)."""
        self._items.clear()
        self._done()


class ResidentList(list):
    """No limit: a plain list (callbacks may ``torch.cat`` it), its bytes still counted."""

    def __init__(self, stats: ActivationStats):
        super().__init__()
        self.stats = stats
        self._resident: list[int] = []
        self._done = weakref.finalize(self, _forget, stats, self._resident, [])

    def append(self, t: torch.Tensor) -> None:
        n = t.numel() * t.element_size()
        super().append(t)
        self._resident.append(n)
        self.stats.resident_bytes += n
        self.stats.peak_resident_bytes = max(
            self.stats.peak_resident_bytes, self.stats.resident_bytes
        )

    def close(self) -> None:
        self.clear()
        self._done()


def new_buffer(stats: ActivationStats) -> ResidentList | ActivationBuffer:
    """The store for one block's activations under ``stats``' limit (a list when unbounded)."""
    return ResidentList(stats) if stats.limit_bytes is None else ActivationBuffer(stats)


def trim_heap() -> None:
    """Give freed memory back to the OS. glibc keeps freed heap pages (and raises its mmap
    threshold to 32 MB after the first large free), so a streamed run's RSS would creep up by
    each block's and each batch's temporaries although nothing is referenced; a no-op where
    there is no glibc."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None
