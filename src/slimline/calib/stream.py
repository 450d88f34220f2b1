"""Streamed one-shot compression: a model directory larger than memory in, an artifact out.

The model is opened lazily (``slimline.models.lazy``: the skeleton on the meta device) and the
technique runs unchanged on it. The calibration engine asks this module's ``BlockSource`` for
each part as it reaches it: the stem (embeddings) is read for the capture pass and written out,
then each block is read from disk, compressed by the method's callback, run forward to feed the
next, written to the artifact (``slimline.artifact.stream``) and given back to the meta device.
Data-free methods (RTN, magnitude pruning, SVD) walk the same parts in the same order; mixed
precision measures in one engine pass (blocks read and given back) and quantizes in a walk.
``stream_plan`` says, per technique, which of these it is, or why it cannot stream. Whatever
the method left
untouched (the final norm and head, blocks a method skipped) is copied through at the end.
Memory is one block plus the calibration activations, whatever the model's size, and the
weights file is byte-identical to the one the in-memory path writes.
"""

from __future__ import annotations

import re
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from slimline.artifact.io import ArtifactInfo, _tensors_for_save
from slimline.artifact.stream import ArtifactStream
from slimline.calib.buffer import activation_limit, run_stats, trim_heap
from slimline.calib.engine import STREAM_ATTR
from slimline.core import (
    Context,
    StageRecord,
    TechniqueConfig,
    apply_technique,
    get_technique,
    record_stage,
    select_modules,
)
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
    # a pass that only measures (mixed precision's sensitivity): parts are read and given back,
    # not written, so the method can come back to them once it has decided what to do
    measure_only: bool = False

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
        if self.passes > 1 and not self.measure_only:
            raise ConfigError(
                "this method runs the calibration engine more than once, which a streamed "
                "model cannot do (each block is written out after its one pass)",
                "compress without --stream",
            )
        self.load(STEM)

    def stem_done(self) -> None:
        self.done(STEM)

    def load_block(self, i: int) -> None:
        self.load(f"{self.block_prefix}.{i}")

    def block_done(self, i: int) -> None:
        self.done(f"{self.block_prefix}.{i}")

    def done(self, unit: str) -> None:
        if self.measure_only:
            self.lazy.release(unit)
            trim_heap()
        else:
            self.write(unit)

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
        trim_heap()
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


# How each technique streams. "engine": it runs on the calibration engine, which reads and
# writes each part as it reaches it; "walk": it needs no data and changes each layer on its own,
# so it is applied part by part; "mixed": a measuring engine pass, a global decision, then a
# walk. A technique not listed changes the model as a whole (structured removal, training) and
# cannot stream. One table, read by compress_streamed and by the runner before any work.
ENGINE, WALK, MIXED = "engine", "walk", "mixed"
_HOW: dict[str, str] = {
    "quant.rtn": WALK,
    "quant.gptq": ENGINE,
    "quant.awq": ENGINE,
    "quant.smoothquant": ENGINE,
    "quant.w8a8": ENGINE,  # without calibration needs (dynamic, no smoothing): WALK
    "quant.mixed": MIXED,
    "prune.magnitude": WALK,
    "prune.wanda": ENGINE,
    "prune.sparsegpt": ENGINE,
    "lowrank.svd": WALK,
    "lowrank.asvd": ENGINE,
}
_NO = "compress without --stream (or `stream: false` in the recipe)"


def stream_plan(cfg: TechniqueConfig) -> str:
    """How ``cfg`` streams (``engine``, ``walk`` or ``mixed``); ``ConfigError`` saying why
    not, and what to use, for a technique or setting that needs the whole model at once."""
    how = _HOW.get(cfg.kind)
    if how is None:
        raise ConfigError(
            f"{cfg.kind} changes the model as a whole (it removes structure or trains), so it "
            "cannot run one block at a time; streamed: " + ", ".join(sorted(_HOW)),
            _NO,
        )
    if getattr(cfg, "storage", "dense") == "sparse":
        raise ConfigError(
            f"{cfg.kind} with storage: sparse converts every pruned layer after the last block, "
            "when a streamed model's blocks are back on disk",
            "use storage: dense when streaming (the zeros are the same), or " + _NO,
        )
    if cfg.kind == "prune.magnitude" and getattr(cfg, "scope", "layer") == "global":
        raise ConfigError(
            "prune.magnitude with scope: global ranks every layer's weights together, which "
            "needs the whole model in memory",
            "use scope: layer or row when streaming, or " + _NO,
        )
    if cfg.kind == "quant.mixed" and getattr(cfg, "metric", "output") == "kl":
        raise ConfigError(
            "quant.mixed with metric: kl runs the whole model once per layer and bit width",
            "use metric: output (it streams: one measuring pass, then one writing pass), or " + _NO,
        )
    if how == ENGINE and "calib" not in cfg.requires():
        how = WALK
    return how


def _merge(merged: dict[str, Any], rec: dict[str, Any]) -> None:
    """One part's record of a walked technique into the whole model's: lists and per-layer
    maps join, counts and seconds add, "before" figures keep the first part's (the model as it
    came), anything else keeps the last part's (the model as it left)."""
    for k, v in rec.items():
        old = merged.get(k)
        if k not in merged:
            merged[k] = v
        elif isinstance(v, list) and isinstance(old, list):  # names (RTN's paths): a set
            strs = all(isinstance(x, str) for x in old + v)
            merged[k] = old + [x for x in v if not (strs and x in old)]
        elif isinstance(v, dict) and isinstance(old, dict):
            merged[k] = {**old, **v}
        elif k.endswith("_before"):
            continue
        elif k in ("seconds", "layers", "params_pruned", "params_considered"):
            merged[k] = old + v
        else:
            merged[k] = v
    if "params_pruned" in rec and merged.get("params_considered"):
        merged["sparsity"] = merged["params_pruned"] / merged["params_considered"]


def _walk(
    src: BlockSource, cfg: TechniqueConfig, ctx: Context, units: list[str] | None = None
) -> dict[str, Any]:
    """A technique that needs no data applied part by part (``units``: only these); the
    records merged as one."""
    from slimline.quant.config import block_prefix

    model = src.lazy.model
    within = [p] if (p := block_prefix(model)) else None
    merged: dict[str, Any] = {}
    for unit, prefixes in src.units.items():
        if units is not None and unit not in units:
            continue
        sel = select_modules(model, getattr(cfg, "targets", None), cfg.ignore, within=within)
        if not any(_under(n, prefixes) for n in sel):
            continue
        src.load(unit)
        _merge(merged, get_technique(cfg.kind).apply(model, _only(cfg, prefixes), ctx) or {})
        src.write(unit)
    return merged


def _mixed(src: BlockSource, cfg: Any, ctx: Context) -> dict[str, Any]:
    """Mixed precision streamed: the sensitivity pass reads each block and gives it back
    unwritten; with the bits chosen, each block is read again, quantized and written."""
    from slimline.quant.mixed import apply_allocation, mixed_precision

    def apply(model: Any, alloc: Any, pack: bool = True) -> int:
        src.measure_only = False
        for unit, prefixes in src.units.items():
            mine = {n: b for n, b in alloc.bits.items() if _under(n, prefixes)}
            if mine:
                src.load(unit)
                apply_allocation(model, replace(alloc, bits=mine), pack)
                src.write(unit)
        return len(alloc.bits)

    src.measure_only = True
    try:
        return mixed_precision(src.lazy.model, ctx.calib, cfg, ctx.workdir, apply=apply)
    finally:
        src.measure_only = False


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
    workdir: str | Path | None = None,
    home: Any = None,
) -> StreamResult:
    """Compress the safetensors model at ``model_dir`` with ``config`` one block at a time and
    write the artifact to ``out_dir``; the model is never in memory whole.

    ``calib``: ``[samples, tokens]`` token ids for calibrated methods, or a function of the
    model's tokenizer that makes them (called only when the method needs data). The run record (peak RSS,
    ``streamed: true``) goes into the manifest's ``stages`` and ``stream`` fields. On any error,
    a full disk included, nothing is left at ``out_dir`` and the same call can be run again.
    ``activation_limit_mb`` (default: the enclosing ``activation_limit``, else
    ``SLIMLINE_ACT_LIMIT_MB``) bounds the calibration activations held in memory; the rest goes
    to a temp dir (``slimline.calib.buffer``).
    ``workdir``: where a technique writes its side files (mixed precision's plot); ``home``:
    the slimline home whose key signs the artifact.
    A technique that cannot stream (``stream_plan``) raises ``ConfigError`` before any work.
    """
    from slimline.outputs import check_output

    t0 = time.perf_counter()
    how = stream_plan(config)  # a technique that cannot stream is refused before any work
    check_output(out_dir, replace=overwrite)
    limit = (
        activation_limit(activation_limit_mb) if activation_limit_mb is not None else run_stats()
    )
    with PeakRss() as peak, limit as acts:
        lazy = open_lazy(model_dir, trust_remote_code=trust_remote_code)
        if callable(calib):
            calib = calib(lazy.tokenizer) if "calib" in config.requires() else None
        trim_heap()  # the tokenizer's and the skeleton's temporaries
        ctx = Context(calib=calib, workdir=Path(workdir) if workdir is not None else None)
        with ArtifactStream(
            lazy.model, lazy.tokenizer, out_dir, manifest={"kind": lazy.kind}, parent=parent, key=key,
            overwrite=overwrite, home=home,
        ) as writer:  # fmt: skip
            src = BlockSource(lazy, writer, peak)
            setattr(lazy.model, STREAM_ATTR, src)
            try:
                if how == ENGINE:
                    rec: Any = apply_technique(lazy.model, config, ctx)
                    if not src.passes:
                        raise ConfigError(
                            f"{config.kind} does not run on the calibration engine, so it cannot stream",
                            _NO,
                        )
                else:
                    run = (
                        (lambda: _walk(src, config, ctx))
                        if how == WALK
                        else (lambda: _mixed(src, config, ctx))
                    )
                    rec = record_stage(lazy.model, config, run)
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


def copy_streamed(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    manifest: dict[str, Any] | None = None,
    key: Any = None,
    overwrite: bool = False,
    home: Any = None,
) -> ArtifactInfo:
    """The model at ``model_dir`` as an artifact, unchanged, written part by part (a streamed
    run's baseline): the weights file ``save_artifact`` writes for the loaded model."""
    lazy = open_lazy(model_dir)
    with ArtifactStream(
        lazy.model, lazy.tokenizer, out_dir, manifest={"kind": lazy.kind, **(manifest or {})},
        key=key, overwrite=overwrite, home=home,
    ) as writer:  # fmt: skip
        BlockSource(lazy, writer).finish()
        return writer.commit()
