"""The recipe runner: a plain loop over stages, checkpointed after each, resumable.

load model -> measure the baseline -> for each stage: apply, measure, checkpoint (a signed
artifact, written atomically) -> check targets -> save the final artifact (parent = baseline) ->
register it -> write the report. ``run.json`` in the run dir records the recipe digest and the
stage trace; a run dir whose recipe digest matches resumes after its last finished stage, one
with another recipe refuses to.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import resource
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from slimline.core import Context, apply_technique, set_threads
from slimline.errors import ConfigError, InputError
from slimline.models.arch import get_arch
from slimline.outputs import check_output, move_aside
from slimline.profile.runtime import RssSampler
from slimline.progress import track
from slimline.recipe import measure
from slimline.recipe.schema import Recipe, load_recipe
from slimline.recipe.targets import Verdict, check_targets, suite_verdicts
from slimline.runstate import RUN_FILE, RUN_FORMAT, RUN_FORMAT_VERSION, is_run_dir, read_run_state


@dataclass
class RunResult:
    """What a run produced: where, the trace, the verdicts, the artifact and the report."""

    run_dir: Path
    recipe: Recipe
    baseline: dict[str, Any]
    stages: list[dict[str, Any]]
    final: dict[str, Any]
    verdicts: list[Verdict]
    artifact: Path | None = None
    digest: str | None = None
    registered: dict[str, Any] | None = None
    report: Path | None = None
    card: Path | None = None
    resumed_from: int = 0  # stages taken from checkpoints instead of being run
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def all_met(self) -> bool:
        return all(v.met for v in self.verdicts)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux: the process's lifetime peak, what /usr/bin/time -v reports.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


class _Run:
    """State of one run; each method is one step of the loop in ``run_recipe``."""

    def __init__(self, recipe: Recipe, run_dir: Path, *, threads: int | None):
        self.recipe = recipe
        self.dir = run_dir
        self.threads = threads
        self.state: dict[str, Any] = {}
        self.replaced: Path | None = None  # where --fresh moved the old run dir

    # --- run dir and resume ------------------------------------------------------------------

    def check(self, resume: bool | None) -> None:
        """Everything about the run dir that can refuse the run, before anything is written."""
        f = self.dir / RUN_FILE
        digest = self.recipe.work_digest()
        if not f.exists() and self.dir.is_dir() and any(self.dir.iterdir()):
            raise ConfigError(
                f"{self.dir} is not empty and is not a run dir (no {RUN_FILE})",
                "choose another run dir with -o",
            )
        if not f.exists() and resume:
            raise ConfigError(
                f"nothing to resume: {f} does not exist", "run without --resume first"
            )
        if f.exists() and resume is False:
            if not is_run_dir(self.dir):
                raise ConfigError(
                    f"{self.dir} holds a {RUN_FILE} that `slimline run` did not write, so --fresh "
                    "will not replace it (nothing was changed)",
                    "choose another run dir with -o, or move that directory away yourself",
                )
            return
        if f.exists():
            try:
                old = read_run_state(self.dir)
            except InputError as e:
                raise ConfigError(
                    e.problem, "choose another run dir with -o (it was left as it is)"
                ) from e
            if old.get("work_digest") != digest:
                raise ConfigError(
                    f"{self.dir} holds a run of another recipe ({old.get('recipe', {}).get('name')!r}, "
                    f"work digest {str(old.get('work_digest'))[:12]}); this recipe's is {digest[:12]}",
                    "replace it with --fresh, or choose a new run dir with -o",
                )

    def open(self, resume: bool | None) -> None:
        """Create or resume the run dir (``check`` has passed): from here on it is written."""
        f = self.dir / RUN_FILE
        digest = self.recipe.work_digest()
        if f.exists() and resume is False:
            self.replaced = move_aside(self.dir)  # never deleted; what it registered stays
        if f.exists():
            self.state = read_run_state(self.dir)
            # same work, maybe other targets or name: re-check against this recipe
            self.state.update(recipe=self.recipe.to_dict(), recipe_digest=self.recipe.digest())
            self.state.setdefault("format", RUN_FORMAT)
            self.state.setdefault("format_version", RUN_FORMAT_VERSION)
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.state = {
                "format": RUN_FORMAT,
                "format_version": RUN_FORMAT_VERSION,
                "work_digest": digest,
                "recipe_digest": self.recipe.digest(),
                "recipe": self.recipe.to_dict(),
                "started_at": _now(),
                "stages": [],
                "status": "running",
                "environment": _environment(self.recipe.data.seed),
            }
            if self.replaced is not None:
                self.state["replaced"] = str(self.replaced)
            self.save_state()
        _write_text(
            self.dir / "recipe.yaml", yaml.safe_dump(self.recipe.to_dict(), sort_keys=False)
        )

    def save_state(self) -> None:
        _write_json(self.dir / RUN_FILE, self.state)

    # --- data and context ----------------------------------------------------------------------

    def supplies(self, base: Any) -> None:
        """Load what the stages declare they need (``TechniqueConfig.requires``): calibration
        blocks, training data, teacher models. Done before the run dir is written, so bad data
        or a teacher that does not load refuses the run with nothing half-created. No technique
        loads data or models itself."""
        from slimline.data import calibration_blocks
        from slimline.models import load_model

        d = self.recipe.data
        needs = [(cfg, cfg.requires()) for cfg in self.recipe.stages]
        self.calib = None
        if any("calib" in n for _, n in needs):
            c = d.calibration
            self.calib = calibration_blocks(
                base.tokenizer, c.source, n=c.n, seq_len=c.seq_len, seed=d.seed
            )
        self.train: dict[tuple[str, int], Any] = {}
        self.teachers: dict[str, Any] = {"base": base.model}
        for cfg, n in needs:
            if "train" in n:
                key = self.train_split(cfg)
                if key not in self.train:
                    self.train[key] = _train_data(base, key, d)
            spec = str(getattr(cfg, "teacher", "base"))
            if "teacher" in n and spec not in self.teachers:
                self.teachers[spec] = load_model(spec).model

    def train_split(self, cfg: Any) -> tuple[str, int]:
        """(source, seq_len) of a stage's training data: the recipe's ``data.train`` when set,
        else the source and length the stage's config names (``data``, ``seq_len``)."""
        t = self.recipe.data.train
        if t is not None:
            return t.source, t.seq_len
        return str(getattr(cfg, "data", "python-docs")), int(getattr(cfg, "seq_len", 256))

    def context(self, lm: Any) -> Context:
        work = self.dir / "work"
        work.mkdir(exist_ok=True)
        first = next(iter(self.eval_sets.values()), None)
        return Context(
            tokenizer=lm.tokenizer,
            calib=self.calib,
            eval=first,
            seed=self.recipe.data.seed,
            workdir=work,
            extra={"recipe": self.recipe.name, "arch": lm.arch},
        )

    def for_stage(self, ctx: Context, cfg: Any) -> Context:
        """The context of one stage: its training data and teacher, as it declared."""
        n = cfg.requires()
        ctx.train = self.train[self.train_split(cfg)] if "train" in n else None
        ctx.teacher = (
            self.teachers[str(getattr(cfg, "teacher", "base"))] if "teacher" in n else None
        )
        return ctx

    def load_eval(self, tokenizer: Any) -> None:
        from slimline.data import eval_blocks

        s = self.recipe.eval
        self.eval_sets = {
            ds: eval_blocks(tokenizer, ds, seq_len=s.seq_len, max_blocks=s.windows)
            for ds in s.datasets
        }

    # --- measuring -------------------------------------------------------------------------------

    def measure(
        self,
        lm: Any,
        teacher: Any | None,
        ckpt: Path | None,
        *,
        quality: bool = True,
        paired: bool = False,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's metrics and, when ``paired``, the teacher's cost re-timed interleaved with
        it (the fair baseline for latency targets; empty otherwise)."""
        s = self.recipe.eval
        m: dict[str, Any] = {}
        base: dict[str, Any] = {}
        if quality and s.metrics and self.eval_sets:
            m.update(measure.quality(lm, self.eval_sets, s, teacher))
        m.update(measure.params(lm.model))
        if ckpt is not None:
            m["size/bytes"] = float(_dir_bytes(ckpt))
        if lm.kind == "causal-lm":
            for i, lat in enumerate(s.latencies()):
                tag = "" if i == 0 else f"@{lat.engine}"  # the primary engine's names stay plain
                if paired and teacher is not None:
                    mine, theirs = measure.paired_cost(lm, teacher, lat)
                    base.update({k + tag: v for k, v in theirs.items()})
                else:
                    mine = measure.cost(lm, lat)
                m.update({k + tag: v for k, v in mine.items()})
        return m, base


def _environment(seed: int) -> dict[str, Any]:
    from slimline.artifact.io import environment

    env = environment(seed)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        pass
    return env


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def _save(lm: Any, path: Path, manifest: dict[str, Any], parent: str | None, home: Any) -> Any:
    from slimline.artifact import save_artifact

    return save_artifact(
        lm, None, path, manifest=manifest, parent=parent, overwrite=True, home=home
    )


def _load_checkpoint(path: Path, like: Any, home: Any) -> Any:
    """A stage checkpoint, verified (digests + signature by this home's key) before it is built."""
    from slimline.artifact import load_artifact
    from slimline.models import LoadedModel

    model, _, manifest = load_artifact(path, home=home)
    return LoadedModel(model, like.tokenizer, get_arch(model), like.kind, str(path), path, manifest)


def run_recipe(
    recipe: Recipe | str | os.PathLike[str],
    run_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool | None = None,
    register: bool = True,
    registry_home: str | os.PathLike[str] | None = None,
    report: bool = True,
    threads: int | None = None,
    artifact_dir: str | os.PathLike[str] | None = None,
    manifest_extra: dict[str, Any] | None = None,
) -> RunResult:
    """Run ``recipe`` (a ``Recipe``, a file or a template name) in ``run_dir``.

    ``registry_home``: the slimline home whose key signs the checkpoints and artifact and whose
    registry receives them (default ``$SLIMLINE_HOME`` or ``~/.slimline``).
    ``resume``: None = resume when the run dir holds this recipe's run, start fresh otherwise;
    True = must resume; False = must start fresh. ``register``: add the result (and its baseline
    as parent) to the registry at ``registry_home``. ``threads``: torch threads while compressing.
    ``artifact_dir``: where the final artifact goes (new, or an artifact it replaces; default
    ``RUN_DIR/artifact``).
    ``manifest_extra``: more keys for the final artifact's manifest (a search writes the study
    and trial a candidate came from).

    The model, the data and every teacher are loaded and checked before the run dir is written.
    """
    from slimline.models import load_model

    set_threads(threads)  # a bad count fails here, before the run dir is touched
    if run_dir is not None:  # before the recipe's model is read: a bad path costs a second
        check_output(run_dir, replace=True, what="run dir")  # resumed or refused by check()
    if artifact_dir is not None:  # an artifact there is replaced (a continued run), nothing else
        from slimline.artifact.spec import is_artifact

        check_output(artifact_dir, replace=is_artifact)
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    check_output(out, replace=True, what="run dir")
    from slimline.recipe.streamed import run_streamed, wants_stream

    if wants_stream(recipe):  # too large to hold twice: compressed and evaluated block by block
        if recipe.eval.suite is not None:
            raise ConfigError(
                f"eval.suite {recipe.eval.suite!r} needs the final model and the baseline in "
                "memory together, and this recipe runs streamed (block by block)",
                "drop eval.suite and run `slimline eval ARTIFACT --reference MODEL` afterwards",
            )
        return run_streamed(
            recipe, out, resume=resume, register=register, registry_home=registry_home,
            report=report, artifact_dir=Path(artifact_dir) if artifact_dir else None,
            threads=threads, manifest_extra=manifest_extra,
        )  # fmt: skip
    from slimline.recipe import ranks

    if not ranks.is_main():  # `accelerate launch -n N`: only the main process writes
        return ranks.follow(recipe, out, registry_home=registry_home, threads=threads)
    run = _Run(recipe, out, threads=threads)
    run.check(resume)
    t_start = time.perf_counter()

    teacher = load_model(recipe.model)
    run.load_eval(teacher.tokenizer)
    run.supplies(teacher)
    run.open(resume)

    # Baseline: its artifact is the parent of everything this run produces.
    base_dir = out / "baseline"
    if "baseline" not in run.state:
        _seed(recipe.data.seed)
        info = _save(
            teacher,
            base_dir,
            {
                "name": f"{recipe.name}-baseline",
                "source": recipe.model,
                "created_at": _source_time(teacher),
            },
            None,
            registry_home,
        )
        base_metrics, _ = run.measure(teacher, None, base_dir)
        # Against itself the teacher agrees everywhere and diverges nowhere, by definition.
        multi = len(run.eval_sets) > 1
        for metric, same in (("kl/teacher", 0.0), ("agree/top1", 1.0)):
            if metric in recipe.eval.metrics:
                base_metrics[metric] = same
                if multi:
                    base_metrics.update({f"{metric}/{ds}": same for ds in run.eval_sets})
        run.state["baseline"] = {
            "metrics": base_metrics,
            "digest": info.digest,
            "model": _describe(teacher),
        }
        run.save_state()
    baseline = run.state["baseline"]

    done = run.state["stages"]
    for j, st in enumerate(done):  # same identity, other run control (more steps): go on from it
        if st["config"] != recipe.stages[j].to_dict():
            del done[j:]
            break
    resumed = len(done)
    if done:  # resume from the last finished stage's checkpoint (verified before it is built)
        lm = _load_checkpoint(out / done[-1]["checkpoint"], teacher, registry_home)
    else:
        lm = load_model(recipe.model)
    ctx = run.context(lm)
    parent = done[-1]["digest"] if done else baseline["digest"]

    for i, cfg in enumerate(track(recipe.stages, "stages")):
        ranks.before_stage(cfg)  # other processes join a training stage here (ranks.follow)
        if i < len(done):
            continue
        _seed(recipe.data.seed + i)
        rss = RssSampler()
        t0 = time.perf_counter()
        # only a stage that trains needs autograd (the compress commands always ran without)
        with rss, torch.set_grad_enabled("train" in cfg.requires()):
            record = apply_technique(lm.model, cfg, run.for_stage(ctx, cfg))
        wall = time.perf_counter() - t0
        lm.arch = get_arch(lm.model)  # a structural stage changed what the map describes
        name = f"stages/{i + 1:02d}-{cfg.kind}"
        ckpt = out / name
        last = i == len(recipe.stages) - 1
        rec = record.model_dump(mode="json")
        info = _save(
            lm,
            ckpt,
            {"name": f"{recipe.name}-stage{i + 1}", "stage": rec},
            parent,
            registry_home,
        )
        quality = recipe.eval.every_stage or last
        metrics, base_cost = run.measure(lm, teacher, ckpt, quality=quality, paired=last)
        if base_cost:  # the final model's latency is judged against the baseline timed beside it
            baseline["unpaired_cost"] = {
                k: v for k, v in baseline["metrics"].items() if k in base_cost
            }
            baseline["metrics"].update(base_cost)
        done.append(
            {
                "index": i + 1,
                "kind": cfg.kind,
                "config": cfg.to_dict(),
                "record": rec,
                "wall_s": wall,
                "peak_rss_mb": rss.peak / 1e6,
                "process_peak_rss_mb": _peak_rss_mb(),
                "metrics": metrics,
                "checkpoint": name,
                "digest": info.digest,
                "finished_at": _now(),
            }
        )
        parent = info.digest
        run.save_state()
        _after_stage(i)

    final = done[-1]["metrics"] if done else baseline["metrics"]
    suite = _final_suite(run, lm, teacher, done, baseline, final)
    verdicts = check_targets(recipe.targets, final, baseline["metrics"]) + suite_verdicts(suite)
    res = RunResult(out, recipe, baseline, done, final, verdicts, resumed_from=resumed)
    if run.replaced is not None:
        res.extra["replaced"] = run.replaced
    art = Path(artifact_dir) if artifact_dir is not None else out / "artifact"
    manifest = artifact_manifest(
        recipe,
        done,
        final,
        baseline,
        verdicts,
        _fingerprint(ctx),
        {**({"suite": suite} if suite else {}), **(manifest_extra or {})},  # suite: registry gates
    )
    info = _save(lm, art, manifest, baseline["digest"], registry_home)
    res.artifact, res.digest = art, info.digest
    if recipe.export:  # engine files, verified there, children of the artifact
        from slimline.recipe.exports import run_exports

        res.extra["exports"] = run_exports(run, lm, teacher, info, registry_home)
        for e in res.extra["exports"]:  # quality in the engine, judged like torch's: ppl@llamacpp
            tag = "@" + str((e.get("engine") or {}).get("engine", e["format"]))
            for into, got in ((final, e["metrics"]), (baseline["metrics"], e["baseline_metrics"])):
                into.update({k + tag: v for k, v in got.items() if isinstance(v, float)})
    # the final artifact's own size is what a user ships: re-check size with it
    final["size/bytes"] = float(info.size_bytes)
    res.verdicts = check_targets(recipe.targets, final, baseline["metrics"]) + suite_verdicts(suite)
    run.state.update(
        {
            "status": "finished",
            "finished_at": _now(),
            "wall_s": run.state.get("wall_s", 0.0) + time.perf_counter() - t_start,
            "artifact": "artifact" if artifact_dir is None else str(art.resolve()),
            "digest": info.digest,
            "verdicts": [v.to_dict() for v in res.verdicts],
            "student": _describe(lm),
        }
    )
    if register:
        res.registered = _register(
            recipe,
            base_dir,
            art,
            registry_home,
            [out / e["path"] for e in res.extra.get("exports", [])],
        )
        run.state["registered"] = res.registered
    run.save_state()
    if report:
        from slimline.report import write_report

        res.report, res.card = write_report(out)
    ranks.barrier()  # the other processes of a launch exit once everything is written
    return res


def _final_suite(
    run: _Run,
    lm: Any,
    teacher: Any,
    done: list[dict[str, Any]],
    baseline: dict[str, Any],
    final: dict[str, Any],
) -> dict[str, Any] | None:
    """The recipe's evaluation suite on the final model against the baseline, run once after the
    last stage (kept in ``run.json`` and reused while the final model is the same); its metrics
    join the final ones and its reference values the baseline's, where the recipe's own
    measurements did not already name them."""
    cfg = run.recipe.eval
    if cfg.suite is None:
        return None
    key = {
        "suite": cfg.suite,
        "gates": list(cfg.gates),
        "model_digest": done[-1]["digest"] if done else baseline["digest"],
        "reference_digest": baseline["digest"],
    }
    old = run.state.get("suite") or {}
    if any(old.get(k) != v for k, v in key.items()):
        t0 = time.perf_counter()
        rec = measure.suite(lm, teacher, cfg, run.dir / "suite")
        rec["figures"] = [os.path.relpath(f, run.dir) for f in rec["figures"]]
        rec.update(key, wall_s=round(time.perf_counter() - t0, 1))
        run.state["suite"] = rec
        run.save_state()
    rec = run.state["suite"]
    for k, v in rec["metrics"].items():
        final.setdefault(k, v)
    for k, v in rec["reference"].items():
        baseline["metrics"].setdefault(k, v)
    return rec


def artifact_manifest(
    recipe: Recipe,
    done: list[dict[str, Any]],
    final: dict[str, Any],
    baseline: dict[str, Any],
    verdicts: list[Verdict],
    fingerprint: str | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The final artifact's manifest fields: recipe, stage trace, metrics beside the baseline's,
    target verdicts, data fingerprint (one layout for the in-memory and the streamed run)."""
    return {
        "name": recipe.name,
        "recipe": recipe.to_dict(),
        "recipe_digest": recipe.digest(),
        "stages": done,
        "metrics": {k: v for k, v in final.items() if isinstance(v, (int, float))},
        "baseline_metrics": {
            k: v for k, v in baseline["metrics"].items() if isinstance(v, (int, float))
        },
        "targets": [v.to_dict() for v in verdicts],
        "data_fingerprint": fingerprint,
        "seed": recipe.data.seed,
        "teacher": baseline["model"],
        **extra,
    }


def _after_stage(index: int) -> None:
    """Called once a stage's checkpoint and state are written: the point a killed run resumes
    from. A no-op; tests replace it to kill a run exactly there."""


def _register(
    recipe: Recipe, base: Path, art: Path, home: Any, exports: list[Path] = ()
) -> dict[str, Any]:
    """The baseline, the artifact (its child) and each export (the artifact's children, named
    ``<recipe>-<format>``)."""
    from slimline.artifact.spec import read_manifest
    from slimline.registry import Registry

    reg = Registry(home)
    b = reg.register(base, f"{recipe.name}-baseline")
    v = reg.register(art, recipe.name, parent=b.ref)
    out = {"ref": v.ref, "digest": v.digest, "parent": b.ref, "home": str(reg.home)}
    for e in exports:
        kind = str(read_manifest(e).get("kind", "")).removeprefix("export/")
        x = reg.register(e, f"{recipe.name}-{kind}", parent=v.ref)
        out.setdefault("exports", {})[kind] = {"ref": x.ref, "digest": x.digest}
    return out


def _train_data(base: Any, split: tuple[str, int], d: Any) -> Any:
    """Training data for a stage: the recipe's ``data.train`` (``n`` blocks, never a calibration
    block), else every training block of the stage's source (``slimline.distill.make_data``:
    packed blocks for causal LMs, padded paragraphs for encoders)."""
    from slimline.data import train_blocks
    from slimline.distill import make_data

    source, seq_len = split
    if d.train is not None:
        blocks = train_blocks(
            base.tokenizer, source, seq_len=seq_len, seed=d.seed, exclude_calib=d.calibration.n
        )
        return blocks[: d.train.n]
    return make_data(base, source, seq_len, d.seed)


def _fingerprint(ctx: Context) -> str | None:
    from slimline.data import fingerprint

    return fingerprint(ctx.calib) if ctx.calib is not None else None


def _source_time(lm: Any) -> str:
    # A fixed creation time for the baseline (the source's mtime) keeps its digest stable across
    # runs, so the registry's content-addressed store holds it once.
    p = lm.path
    t = p.stat().st_mtime if p is not None and p.exists() else 0.0
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


def _describe(lm: Any) -> dict[str, Any]:
    """Architecture summary for the model card."""
    cfg = lm.model.config
    a = lm.arch
    out: dict[str, Any] = {
        "source": str(lm.source),
        "class": type(lm.model).__name__,
        "family": a.family,
    }
    for key, fn in (
        ("blocks", a.n_blocks),
        ("hidden", a.hidden),
        ("intermediate", a.intermediate),
        ("heads", a.n_heads),
        ("kv_heads", a.n_kv_heads),
    ):
        try:
            out[key] = int(fn(cfg))
        except Exception:  # a family without that field (e.g. no kv heads)
            out[key] = None
    out["vocab"] = int(getattr(cfg, "vocab_size", 0) or 0)
    out["params"] = measure.params(lm.model)["params/total"]
    return out
