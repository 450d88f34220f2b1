"""Streamed one-shot compression: a model directory larger than memory in, an artifact out.

The model is opened lazily (``slimline.models.lazy``: the skeleton on the meta device) and the
technique runs unchanged on it. The calibration engine asks this module's ``BlockSource`` for
each part as it reaches it: the stem (embeddings) is read for the capture pass and written out,
then each block is read from disk, compressed by the method's callback, run forward to feed the
next, written to the artifact (``slimline.artifact.stream``) and given back to the meta device.
Data-free methods (RTN) walk the same parts in the same order. Whatever the method left
untouched (the final norm and head, blocks a method skipped) is copied through at the end.
Memory is one block plus the calibration activations, whatever the model's size, and the
weights file is byte-identical to the one the in-memory path writes.
"""

from __future__ import annotations

import ctypes
import re
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from slimline.artifact.io import ArtifactInfo, _tensors_for_save
from slimline.artifact.stream import ArtifactStream
from slimline.calib.buffer import activation_limit, limit_from_env
from slimline.calib.engine import STREAM_ATTR
from slimline.core import Context, StageRecord, TechniqueConfig, apply_technique, select_modules
from slimline.errors import ConfigError
from slimline.models.lazy import LazyModel, open_lazy

STEM = "stem"
TAIL = "tail"


class PeakRss:
    """Peak resident memory of this process while the block runs, sampled by a thread (psutil):
    the process-lifetime peak (``ru_maxrss``) would include whatever ran before."""

    def __init__(self, interval_s: float = 0.02):
        import psutil

        self._proc = psutil.Process()
        self.interval_s = interval_s
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> int:
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return self.peak

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


def _trim_heap() -> None:
    """Give the freed block back to the OS (glibc keeps freed heap pages otherwise, and RSS
    would creep up block by block although nothing is referenced); a no-op elsewhere."""
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


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@dataclass
class BlockSource:
    """The parts of a lazy model, read on demand and written once each, in order."""

    lazy: LazyModel
    writer: ArtifactStream
    peak: PeakRss | None = None
    passes: int = 0
    written: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        arch, model = self.lazy.arch, self.lazy.model
        self.block_prefix = arch.block_prefix(model)
        n = len(arch.blocks(model))
        self.units: dict[str, list[str]] = {STEM: []}
        self.units.update(
            {f"{self.block_prefix}.{i}": [f"{self.block_prefix}.{i}"] for i in range(n)}
        )
        self.units[TAIL] = [p for p in (arch.final_norm, arch.lm_head) if p]
        inside = [p for k, v in self.units.items() if k != STEM for p in v]
        self.units[STEM] = sorted(
            {k.rpartition(".")[0] for k in self.lazy.aliases if not _under(k, inside)}
        )

    # --- what the calibration engine calls ---------------------------------------------------
    def begin(self, offload: bool) -> None:
        self.passes += 1
        if offload:
            raise ConfigError(
                "streamed compression runs on the CPU (a lazily opened model cannot be moved "
                "to another device whole)",
                "drop the device option, or compress without --stream",
            )
        if self.passes > 1:
            raise ConfigError(
                "this method runs the calibration engine more than once, which a streamed "
                "model cannot do (each block is written out after its one pass)",
                "compress without --stream",
            )
        self.load(STEM)

    def stem_done(self) -> None:
        self.write(STEM)

    def load_block(self, i: int) -> None:
        self.load(f"{self.block_prefix}.{i}")

    def block_done(self, i: int) -> None:
        self.write(f"{self.block_prefix}.{i}")

    # --- parts ---------------------------------------------------------------------------------
    def load(self, unit: str) -> None:
        if unit in self.written:
            raise ConfigError(
                f"{unit} was already compressed and written when the method asked for it again",
                "compress without --stream",
            )
        self.lazy.materialize(unit, self.lazy.names_under(self.units[unit]))

    def write(self, unit: str) -> None:
        """Write ``unit``'s tensors as ``save_artifact`` would (ties by the first name in
        state-dict order), then release them."""
        model = self.lazy.model
        prefixes = self.units[unit]
        state = model.state_dict(keep_vars=True)
        tied: dict[str, str] = {}
        for name in state:
            group = self.lazy.aliases.get(name, [name])
            if _under(name, prefixes) and name != group[0] and state.get(group[0]) is state[name]:
                tied[name] = group[0]
        tensors, modules, inner = _tensors_for_save(
            model, keep=lambda n: _under(n, prefixes) and n not in tied
        )
        self.writer.add(tensors, modules, {**tied, **inner})
        del tensors
        self.written.add(unit)
        self.lazy.release(unit)
        for p in prefixes:  # what the method put there (packed codes, masks) is written: free it
            if p:
                model.get_submodule(p).to("meta")
        _trim_heap()
        if self.peak is not None:
            self.peak.sample()

    def finish(self) -> None:
        """Copy through every part the method did not reach (head, skipped blocks)."""
        for unit in self.units:
            if unit not in self.written:
                self.load(unit)
                self.write(unit)


@dataclass
class StreamResult:
    """What a streamed compression wrote and measured."""

    info: ArtifactInfo
    record: StageRecord | dict[str, Any]
    peak_rss_mb: float
    process_peak_rss_mb: float
    seconds: float
    bytes_in: int
    memory: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "streamed": True,
            "peak_rss_mb": self.peak_rss_mb,
            "process_peak_rss_mb": self.process_peak_rss_mb,
            "model_bytes_on_disk": self.bytes_in,
            "seconds": round(self.seconds, 2),
            **self.memory,
        }


def _only(cfg: TechniqueConfig, prefixes: list[str]) -> TechniqueConfig:
    """``cfg`` narrowed to modules under ``prefixes`` (one part of the model)."""
    alt = "|".join(re.escape(p) for p in prefixes)
    return cfg.model_copy(update={"ignore": [*cfg.ignore, f"re:(?!(?:{alt})(?:\\.|$)).*"]})


def _walk_data_free(src: BlockSource, cfg: TechniqueConfig, ctx: Context) -> dict[str, Any]:
    """A method that needs no data (RTN) applied part by part; the records merged."""
    from slimline.quant.config import block_prefix

    model = src.lazy.model
    within = [p] if (p := block_prefix(model)) else None
    merged: dict[str, Any] = {}
    for unit, prefixes in src.units.items():
        sel = select_modules(model, cfg.targets, cfg.ignore, within=within)
        if not any(_under(n, prefixes) for n in sel):
            continue
        src.load(unit)
        rec = apply_technique(model, _only(cfg, prefixes), ctx).details
        src.write(unit)
        for k, v in rec.items():
            if isinstance(v, list) and isinstance(merged.get(k), list):
                merged[k] = merged[k] + v
            elif k in ("seconds", "layers") and k in merged:
                merged[k] += v
            else:
                merged[k] = v
    return merged


def compress_streamed(
    model_dir: str | Path,
    config: TechniqueConfig,
    out_dir: str | Path,
    *,
    calib: torch.Tensor | Callable[[Any], torch.Tensor] | None = None,
    manifest: dict[str, Any] | None = None,
    parent: str | Path | None = None,
    key: Any = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    activation_limit_mb: float | None = None,
) -> StreamResult:
    """Compress the safetensors model at ``model_dir`` with ``config`` one block at a time and
    write the artifact to ``out_dir``; the model is never in memory whole.

    ``calib``: ``[samples, tokens]`` token ids for calibrated methods, or a function of the
    model's tokenizer that makes them (called only when the method needs data). The run record (peak RSS,
    ``streamed: true``) goes into the manifest's ``stages`` and ``stream`` fields. On any error,
    a full disk included, nothing is left at ``out_dir`` and the same call can be run again.
    ``activation_limit_mb`` (default ``SLIMLINE_ACT_LIMIT_MB``) bounds the calibration
    activations held in memory; the rest goes to a temp dir (``slimline.calib.buffer``).
    """
    from slimline.outputs import check_output

    t0 = time.perf_counter()
    check_output(out_dir, replace=overwrite)
    mb = activation_limit_mb if activation_limit_mb is not None else limit_from_env()
    with PeakRss() as peak, activation_limit(mb) as acts:
        lazy = open_lazy(model_dir, trust_remote_code=trust_remote_code)
        if callable(calib):
            calib = calib(lazy.tokenizer) if "calib" in config.requires() else None
        ctx = Context(calib=calib)
        with ArtifactStream(
            lazy.model, lazy.tokenizer, out_dir, manifest={"kind": lazy.kind}, parent=parent, key=key,
            overwrite=overwrite,
        ) as writer:  # fmt: skip
            src = BlockSource(lazy, writer, peak)
            setattr(lazy.model, STREAM_ATTR, src)
            try:
                if "calib" in config.requires():
                    rec: Any = apply_technique(lazy.model, config, ctx)
                    if not src.passes:
                        raise ConfigError(
                            f"{config.kind} does not run on the calibration engine, so it cannot stream",
                            "compress without --stream",
                        )
                else:
                    rec = {"kind": config.kind, "config": config.to_dict()}
                    rec["details"] = _walk_data_free(src, config, ctx)
                src.finish()
            except (RuntimeError, NotImplementedError) as e:
                if "meta" not in str(e):
                    raise
                raise ConfigError(
                    f"{config.kind} (as configured) reads weights outside the block in hand, "
                    f"which a streamed model holds only on disk ({str(e).splitlines()[0]})",
                    "compress without --stream (or keep the dense storage for pruning)",
                ) from e
            finally:
                delattr(lazy.model, STREAM_ATTR)
            record = rec.model_dump(mode="json") if isinstance(rec, StageRecord) else rec
            result = StreamResult(
                info=None,  # type: ignore[arg-type]
                record=record,
                peak_rss_mb=peak.peak_mb,
                process_peak_rss_mb=round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
                seconds=time.perf_counter() - t0,
                bytes_in=lazy.bytes_on_disk,
                memory=acts.summary(),
            )
            writer.user = {
                **writer.user,
                **(manifest or {}),
                "stages": [record],
                "stream": result.summary(),
            }
            result.info = writer.commit()
    return result


def cli_stream(
    model_dir: str,
    out_dir: str,
    config: TechniqueConfig,
    calib: str,
    calib_samples: int,
    seq_len: int,
    seed: int,
    threads: int,
) -> dict[str, Any]:
    """What ``slimline quantize MODEL_DIR --stream`` (and ``prune --stream``) runs and prints."""
    from slimline.data import calibration_blocks

    torch.set_num_threads(threads)

    def ids(tokenizer: Any) -> torch.Tensor:
        return calibration_blocks(tokenizer, calib, n=calib_samples, seq_len=seq_len, seed=seed)

    res = compress_streamed(model_dir, config, out_dir, calib=ids, manifest={"seed": seed})
    details = res.record.get("details", {})
    return {
        "out": str(res.info.path),
        "method": config.kind,
        "scheme": details.get("scheme", config.kind),
        "size_bytes": res.info.size_bytes,
        "digest": res.info.digest,
        **res.summary(),
    }
