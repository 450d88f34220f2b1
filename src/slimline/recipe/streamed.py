"""A recipe run for a model too large to hold twice: compressed, evaluated and profiled one
block at a time (issue 15).

The in-memory runner holds the baseline (the teacher for ``kl/teacher``) and the model being
compressed, each whole, in float32. Here neither is ever whole: the baseline artifact is the
model directory copied part by part (``copy_streamed``), the stage runs through
``compress_streamed`` (the same bytes the in-memory stage writes), and quality is measured
block-streamed: every eval window runs through the stem, then one block at a time of each
model (read from disk, run on all windows, given back), and only the final hidden states are
kept; ``slimline.eval`` then turns them into log-probabilities through each model's final norm
and head, so perplexity, bits per byte, ECE, KL and top-1 agreement are the same functions of
the same numbers. At most one block of one model, plus both heads, is in memory at a time.

When: ``stream: true`` in the recipe, or by default (``stream`` absent) when the recipe's model
is a safetensors directory whose float32 weights, held twice (baseline and student), would take
more than half the memory available, and every stage streams. ``stream: false`` never streams.

What a streamed run does not do: latency and serving memory are not timed (a model that must be
streamed to be compressed does not fit to be served from torch on this machine), so latency or
memory targets are refused; it runs one stage (a stage's packed output is not the next stage's
plain input); the stage must be one ``stream_plan`` accepts.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimline.errors import ConfigError
from slimline.recipe.schema import Recipe

# stream (by default) when the model's float32 weights, twice over, exceed this share of the
# memory available when the run starts
AUTO_SHARE = 0.5


def _weights_dir(model: str) -> Path | None:
    from slimline.models.bundled import BUNDLED, bundled_path
    from slimline.models.lazy import INDEX, SINGLE

    # a bundled name streams from its converted directory (converted once, into the cache)
    p = bundled_path(model) if model in BUNDLED else Path(model).expanduser()
    return p if p.is_dir() and ((p / INDEX).is_file() or (p / SINGLE).is_file()) else None


def float32_bytes(model_dir: Path) -> int:
    """Bytes of the model's weights read as float32 (what ``load_model`` holds), from the
    safetensors headers alone."""
    from slimline.models.lazy import _scan

    _where, info, _size = _scan(model_dir)
    n = 0
    for _dtype, shape in info.values():
        k = 1
        for d in shape:
            k *= d
        n += k
    return 4 * n


def check_streamable(recipe: Recipe) -> None:
    """Everything about a recipe that a streamed run refuses, before any work."""
    from slimline.calib.stream import stream_plan

    if _weights_dir(recipe.model) is None:
        raise ConfigError(
            f"stream: true needs the model to be a directory of safetensors weights (or a "
            f"bundled name); "
            f"{recipe.model!r} is not",
            "point `model:` at a save_pretrained directory, or drop `stream: true`",
        )
    if len(recipe.stages) != 1:
        raise ConfigError(
            f"a streamed run compresses in one stage; this recipe has {len(recipe.stages)} "
            "(a stage's packed output cannot be streamed into the next)",
            "keep one one-shot stage (e.g. quant.gptq), or set `stream: false`",
        )
    for cfg in recipe.stages:
        stream_plan(cfg)
    if recipe.export:
        raise ConfigError(
            "a streamed run does not export engine files (the exporter reads the whole model)",
            "drop `export:` and run `slimline export ARTIFACT` on a machine that holds it, "
            "or set `stream: false`",
        )
    t = recipe.targets
    timed = [
        n
        for n, v in (
            ("max_prefill_ms", t.max_prefill_ms),
            ("min_decode_tok_s", t.min_decode_tok_s),
            ("max_memory_mb", t.max_memory_mb),
        )
        if v is not None
    ]
    if timed:
        raise ConfigError(
            f"a streamed run does not time the model, so it cannot check {', '.join(timed)}",
            "drop those targets (measure the artifact on its engine with `slimline profile`), "
            "or set `stream: false`",
        )


def wants_stream(recipe: Recipe) -> bool:
    """Whether ``run_recipe`` runs ``recipe`` streamed (see the module doc for the rule)."""
    flag = getattr(recipe, "stream", None)
    if flag is False:
        return False
    if flag is True:
        check_streamable(recipe)
        return True
    d = _weights_dir(recipe.model)
    if d is None:
        return False
    import psutil

    from slimline.errors import ModelLoadError

    try:
        need = 2 * float32_bytes(d)
    except ModelLoadError:  # a bad directory: the in-memory loader says what is wrong with it
        return False
    if need <= AUTO_SHARE * psutil.virtual_memory().available:
        return False
    try:
        check_streamable(recipe)
    except ConfigError:
        return False  # too large, but not streamable: the in-memory runner tries (and says so)
    return True


# --- block-streamed evaluation ---------------------------------------------------------------


class _Finals(nn.Module):
    """Stands in for a model in ``slimline.eval``: logits of a window from its final hidden
    states (computed block by block beforehand) through the final norm and head."""

    def __init__(self, skeleton: nn.Module, arch: Any, finals: dict[bytes, torch.Tensor]):
        super().__init__()
        self.skeleton = skeleton
        self.arch = arch
        self.finals = finals
        self.config = skeleton.config

    def forward(self, input_ids: torch.Tensor, **_: Any) -> Any:
        from transformers.modeling_outputs import CausalLMOutput

        h = torch.cat([self.finals[_key(row)] for row in input_ids])
        if self.arch.final_norm:
            h = self.skeleton.get_submodule(self.arch.final_norm)(h)
        return CausalLMOutput(logits=self.skeleton.get_submodule(self.arch.lm_head)(h))


def _key(row: torch.Tensor) -> bytes:
    return hashlib.sha256(row.contiguous().numpy().tobytes()).digest()


class _Parts:
    """Load / release a lazily opened model's parts by unit (stem, block i, tail), for either
    opener (a plain directory: ``LazyModel``; an artifact: ``LazyArtifact``)."""

    def __init__(self, lazy: Any):
        self.lazy = lazy
        arch, model = lazy.arch, lazy.model
        self.block_prefix = arch.block_prefix(model)
        self.n = len(arch.blocks(model))
        self.tail = [p for p in (arch.final_norm, arch.lm_head) if p]
        inner = [f"{self.block_prefix}.{i}" for i in range(self.n)] + self.tail
        names = [k for k in model.state_dict() if not any(k.startswith(p + ".") for p in inner)]
        self.stem = sorted({k.rpartition(".")[0] for k in names})

    def load(self, key: str, prefixes: list[str]) -> None:
        from slimline.models.lazy import LazyModel

        if isinstance(self.lazy, LazyModel):
            self.lazy.materialize(key, self.lazy.names_under(prefixes))
        else:
            self.lazy.materialize(key, prefixes)

    def release(self, key: str) -> None:
        self.lazy.release(key)


@torch.no_grad()
def _final_hidden(
    lazy: Any, windows: list[torch.Tensor], params: dict[str, float]
) -> dict[bytes, torch.Tensor]:
    """Every window's final hidden state, the model read one part at a time; the parts'
    parameter counts added to ``params`` as each is in hand."""
    from slimline.calib.engine import _first_tensor, capture_inputs
    from slimline.profile.static import param_stats

    parts, model = _Parts(lazy), lazy.model
    ids = torch.cat(windows)

    def count(prefixes: list[str]) -> None:
        for p in prefixes:
            st = param_stats(model.get_submodule(p))
            params["params/total"] += st.total
            params["params/nonzero"] += st.nonzero

    parts.load("stem", parts.stem)
    try:
        inputs, kwargs = capture_inputs(model, lazy.arch, ids, 1, torch.device("cpu"))
        count([p for p in parts.stem if p])
    finally:
        parts.release("stem")
    hidden = list(inputs)
    for i in range(parts.n):
        name = f"{parts.block_prefix}.{i}"
        parts.load(name, [name])
        try:
            blk = model.get_submodule(name)
            hidden = [_first_tensor(blk(x, **kw)) for x, kw in zip(hidden, kwargs, strict=True)]
            count([name])
        finally:
            parts.release(name)
    return {_key(row): h for row, h in zip(ids, hidden, strict=True)}


class _Tail:
    """A model's final norm and head held for scoring (released on exit): with both models'
    tails loaded, the eval sees both distributions of a window at once."""

    def __init__(self, lazy: Any, params: dict[str, float] | None = None):
        self.parts, self.params = _Parts(lazy), params

    def __enter__(self) -> _Tail:
        from slimline.profile.static import param_stats

        self.parts.load("tail", self.parts.tail)
        if self.params is not None:
            model = self.parts.lazy.model
            stem_ids = {
                id(t)
                for p in self.parts.stem
                if p
                for t in model.get_submodule(p).parameters(recurse=False)
            }
            for p in self.parts.tail:  # a head tied to the embedding was counted with the stem
                m = model.get_submodule(p)
                if not any(id(t) in stem_ids for t in m.parameters(recurse=False)):
                    st = param_stats(m)
                    self.params["params/total"] += st.total
                    self.params["params/nonzero"] += st.nonzero
        return self

    def __exit__(self, *exc: Any) -> None:
        self.parts.release("tail")


def streamed_quality(
    model: Any,
    baseline: Any | None,
    eval_sets: dict[str, torch.Tensor],
    metrics: list[str],
    tokenizer: Any,
) -> tuple[dict[str, float], dict[str, float]]:
    """Quality of ``model`` (a lazily opened model) against ``baseline`` (another, or None)
    on ``eval_sets``, named as ``slimline.recipe.measure.quality`` names them, with neither
    model ever whole in memory; and ``model``'s parameter counts (``params/*``)."""
    from slimline.eval.api import _causal
    from slimline.models import LoadedModel

    windows = [w for ids in eval_sets.values() for w in ids.split(1)]
    params = {"params/total": 0.0, "params/nonzero": 0.0}
    finals = _final_hidden(model, windows, params)
    ref_finals = _final_hidden(baseline, windows, {"params/total": 0.0, "params/nonzero": 0.0}) if (
        baseline is not None
    ) else None  # fmt: skip
    vs_teacher = baseline is not None and any(
        m in metrics for m in ("kl/teacher", "agree/top1", "ece")
    )
    with _Tail(model, params):
        lm = LoadedModel(_Finals(model.model, model.arch, finals), tokenizer, model.arch,
                         "causal-lm", "streamed")  # fmt: skip
        if ref_finals is not None and vs_teacher:
            with _Tail(baseline):
                ref = LoadedModel(_Finals(baseline.model, baseline.arch, ref_finals), tokenizer,
                                  baseline.arch, "causal-lm", "streamed baseline")  # fmt: skip
                m = _causal(lm, ref, eval_sets, "default", 1)
        else:
            m = _causal(lm, None, eval_sets, "default" if "ece" in metrics else "ppl", 1)
    return {k: v for k, v in m.items() if k.startswith(tuple(metrics))}, params


# --- the run -----------------------------------------------------------------------------------


def run_streamed(
    recipe: Recipe,
    out: Path,
    *,
    resume: bool | None,
    register: bool,
    registry_home: Any,
    report: bool,
    artifact_dir: Path | None,
    threads: int | None,
    manifest_extra: dict[str, Any] | None = None,
) -> Any:
    """``run_recipe`` for a streamed recipe (``wants_stream``): same run dir, run.json, stage
    trace, signed artifact (the same weights bytes), registry rows and report; quality
    measured block-streamed, no latency."""
    from slimline.artifact import ArtifactInfo
    from slimline.artifact.spec import read_manifest
    from slimline.artifact.stream import ArtifactStream
    from slimline.calib.stream import compress_streamed, copy_streamed
    from slimline.core import set_threads
    from slimline.data import calibration_blocks, eval_blocks
    from slimline.models.lazy import open_lazy, open_lazy_artifact
    from slimline.recipe import runner as R
    from slimline.recipe.targets import check_targets

    set_threads(threads)
    check_streamable(recipe)
    model_dir = _weights_dir(recipe.model)
    assert model_dir is not None
    run = R._Run(recipe, out, threads=threads)
    run.check(resume)
    t_start = time.perf_counter()
    base = open_lazy(model_dir)  # every check load_model makes, weights left on disk
    s = recipe.eval
    run.eval_sets = {
        ds: eval_blocks(base.tokenizer, ds, seq_len=s.seq_len, max_blocks=s.windows)
        for ds in s.datasets
    }
    cfg = recipe.stages[0]
    c = recipe.data.calibration
    calib = (
        calibration_blocks(
            base.tokenizer, c.source, n=c.n, seq_len=c.seq_len, seed=recipe.data.seed
        )
        if "calib" in cfg.requires()
        else None
    )
    run.open(resume)
    run.state["stream"] = {"streamed": True, "why": "stream: true" if recipe.stream else "auto"}

    def quality(lazy: Any, ref: Any) -> dict[str, float]:
        if not (s.metrics and run.eval_sets):
            return {}
        q, params = streamed_quality(lazy, ref, run.eval_sets, s.metrics, base.tokenizer)
        return {**q, **params}

    base_dir = out / "baseline"
    if "baseline" not in run.state:
        info = copy_streamed(
            model_dir,
            base_dir,
            manifest={
                "name": f"{recipe.name}-baseline",
                "source": recipe.model,
                "created_at": R._source_time(_Src(model_dir)),
            },
            overwrite=True,
            home=registry_home,
        )
        m = quality(base, None)
        m.setdefault("params/total", float(sum(p.numel() for p in base.model.parameters())))
        m["size/bytes"] = float(R._dir_bytes(base_dir))
        for metric, same in (("kl/teacher", 0.0), ("agree/top1", 1.0)):
            if metric in s.metrics:
                m[metric] = same
                if len(run.eval_sets) > 1:
                    m.update({f"{metric}/{ds}": same for ds in run.eval_sets})
        run.state["baseline"] = {"metrics": m, "digest": info.digest, "model": _describe(base)}
        run.save_state()
    baseline = run.state["baseline"]

    done = run.state["stages"]
    if done and done[0]["config"] != cfg.to_dict():
        del done[:]
    resumed = len(done)
    name = f"stages/01-{cfg.kind}"
    ckpt = out / name
    if not done:
        R._seed(recipe.data.seed)
        t0 = time.perf_counter()
        res = compress_streamed(
            model_dir, cfg, ckpt, calib=calib, manifest={"name": f"{recipe.name}-stage1"},
            parent=baseline["digest"], overwrite=True, workdir=out / "work", home=registry_home,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        lazy = open_lazy_artifact(ckpt, home=registry_home)
        metrics = quality(lazy, base)
        metrics["size/bytes"] = float(R._dir_bytes(ckpt))
        done.append(
            {
                "index": 1,
                "kind": cfg.kind,
                "config": cfg.to_dict(),
                "record": res.record,
                "wall_s": wall,
                "peak_rss_mb": res.peak_rss_mb,
                "process_peak_rss_mb": R._peak_rss_mb(),
                "metrics": metrics,
                "checkpoint": name,
                "digest": res.info.digest,
                "finished_at": R._now(),
                "stream": res.summary(),
            }
        )
        run.save_state()
        R._after_stage(0)
    final = done[-1]["metrics"]
    verdicts = check_targets(recipe.targets, final, baseline["metrics"])
    result = R.RunResult(out, recipe, baseline, done, final, verdicts, resumed_from=resumed)
    art = Path(artifact_dir) if artifact_dir is not None else out / "artifact"
    manifest = R.artifact_manifest(
        recipe, done, final, baseline, verdicts, _fingerprint(calib),
        {"stream": done[-1].get("stream", {}), **(manifest_extra or {})},
    )  # fmt: skip
    # the checkpoint's weights, re-sealed under the run's manifest: no second compression
    src = open_lazy_artifact(ckpt, home=registry_home)
    ck = read_manifest(ckpt)
    with ArtifactStream(
        src.model, base.tokenizer, art, manifest={"kind": ck.get("kind"), **manifest},
        parent=baseline["digest"], overwrite=True, home=registry_home,
    ) as w:  # fmt: skip
        w.add_file(ckpt / "model.safetensors", ck.get("modules"), ck.get("tied"))
        info: ArtifactInfo = w.commit()
    result.artifact, result.digest = art, info.digest
    final["size/bytes"] = float(info.size_bytes)
    result.verdicts = check_targets(recipe.targets, final, baseline["metrics"])
    run.state.update(
        {
            "status": "finished",
            "finished_at": R._now(),
            "wall_s": run.state.get("wall_s", 0.0) + time.perf_counter() - t_start,
            "artifact": "artifact" if artifact_dir is None else str(art.resolve()),
            "digest": info.digest,
            "verdicts": [v.to_dict() for v in result.verdicts],
            "student": {**baseline["model"], "params": final.get("params/total")},
        }
    )
    if register:
        result.registered = R._register(recipe, base_dir, art, registry_home)
        run.state["registered"] = result.registered
    run.save_state()
    if report:
        from slimline.report import write_report

        result.report, result.card = write_report(out)
    result.extra["streamed"] = True
    return result


class _Src:
    """What ``runner._source_time`` reads of a loaded model: its path."""

    def __init__(self, path: Path):
        self.path = path


def _describe(lazy: Any) -> dict[str, Any]:
    from slimline.recipe import runner as R

    class _Lm:  # the fields runner._describe reads; params from the skeleton (shapes only)
        model, arch, source = lazy.model, lazy.arch, str(lazy.path)

    return R._describe(_Lm)


def _fingerprint(calib: torch.Tensor | None) -> str | None:
    from slimline.data import fingerprint

    return fingerprint(calib) if calib is not None else None
