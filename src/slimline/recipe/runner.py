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
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from slimline.core import Context, apply_technique
from slimline.errors import ConfigError
from slimline.profile.runtime import RssSampler
from slimline.progress import track
from slimline.recipe import measure
from slimline.recipe.schema import Recipe, load_recipe
from slimline.recipe.targets import Verdict, check_targets

RUN_FILE = "run.json"


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

    # --- run dir and resume ------------------------------------------------------------------

    def open(self, resume: bool | None) -> None:
        f = self.dir / RUN_FILE
        digest = self.recipe.work_digest()
        if not f.exists() and self.dir.is_dir() and any(self.dir.iterdir()):
            raise ConfigError(
                f"{self.dir} is not empty and is not a run dir (no {RUN_FILE})",
                "choose another run dir with -o",
            )
        if f.exists() and resume is False:
            self.discard()
        if f.exists():
            try:
                old = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(
                    f"{f} is unreadable ({e})",
                    "start over with --fresh, or choose another dir with -o",
                ) from e
            if old.get("work_digest") != digest:
                raise ConfigError(
                    f"{self.dir} holds a run of another recipe ({old.get('recipe', {}).get('name')!r}, "
                    f"work digest {str(old.get('work_digest'))[:12]}); this recipe's is {digest[:12]}",
                    "replace it with --fresh, or choose a new run dir with -o",
                )
            self.state = old
            # same work, maybe other targets or name: re-check against this recipe
            self.state.update(recipe=self.recipe.to_dict(), recipe_digest=self.recipe.digest())
        else:
            if resume:
                raise ConfigError(
                    f"nothing to resume: {f} does not exist", "run without --resume first"
                )
            self.dir.mkdir(parents=True, exist_ok=True)
            self.state = {
                "work_digest": digest,
                "recipe_digest": self.recipe.digest(),
                "recipe": self.recipe.to_dict(),
                "started_at": _now(),
                "stages": [],
                "status": "running",
                "environment": _environment(self.recipe.data.seed),
            }
            self.save_state()
        _write_text(
            self.dir / "recipe.yaml", yaml.safe_dump(self.recipe.to_dict(), sort_keys=False)
        )

    def discard(self) -> None:
        """``--fresh``: the old run dir goes (renamed first, so a crash never leaves half of it);
        what it registered stays in the registry."""
        trash = self.dir.with_name(f".{self.dir.name}.discarded-{os.getpid()}")
        os.replace(self.dir, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def save_state(self) -> None:
        _write_json(self.dir / RUN_FILE, self.state)

    # --- data and context ----------------------------------------------------------------------

    def context(self, lm: Any, teacher: Any) -> Context:
        from slimline.data import calibration_blocks, train_blocks

        d = self.recipe.data
        calib = calibration_blocks(
            lm.tokenizer,
            d.calibration.source,
            n=d.calibration.n,
            seq_len=d.calibration.seq_len,
            seed=d.seed,
        )
        train = None
        if d.train is not None:
            train = train_blocks(
                lm.tokenizer,
                d.train.source,
                seq_len=d.train.seq_len,
                seed=d.seed,
                exclude_calib=d.calibration.n,
            )[: d.train.n]
        work = self.dir / "work"
        work.mkdir(exist_ok=True)
        first = next(iter(self.eval_sets.values()))
        return Context(
            tokenizer=lm.tokenizer,
            calib=calib,
            train=train,
            eval=first,
            teacher=teacher.model,
            seed=d.seed,
            workdir=work,
            extra={"recipe": self.recipe.name, "arch": lm.arch},
        )

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
        if quality:
            m.update(measure.quality(lm, self.eval_sets, s, teacher))
        m.update(measure.params(lm.model))
        if ckpt is not None:
            m["size/bytes"] = float(_dir_bytes(ckpt))
        if s.latency is not None and lm.kind == "causal-lm":
            if paired and teacher is not None:
                mine, base = measure.paired_cost(lm, teacher, s.latency)
                m.update(mine)
            else:
                m.update(measure.cost(lm, s.latency))
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
    from slimline.models import LoadedModel, get_arch

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
) -> RunResult:
    """Run ``recipe`` (a ``Recipe``, a file or a template name) in ``run_dir``.

    ``registry_home``: the slimline home whose key signs the checkpoints and artifact and whose
    registry receives them (default ``$SLIMLINE_HOME`` or ``~/.slimline``).
    ``resume``: None = resume when the run dir holds this recipe's run, start fresh otherwise;
    True = must resume; False = must start fresh. ``register``: add the result (and its baseline
    as parent) to the registry at ``registry_home``. ``threads``: torch threads while compressing.
    """
    from slimline.models import load_model

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    out = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
    run = _Run(recipe, out, threads=threads)
    run.open(resume)
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()

    teacher = load_model(recipe.model)
    run.load_eval(teacher.tokenizer)

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
    resumed = len(done)
    if done:  # resume from the last finished stage's checkpoint (verified before it is built)
        lm = _load_checkpoint(out / done[-1]["checkpoint"], teacher, registry_home)
    else:
        lm = load_model(recipe.model)
    ctx = run.context(lm, teacher)
    parent = done[-1]["digest"] if done else baseline["digest"]

    for i, cfg in enumerate(track(recipe.stages, "stages")):
        if i < len(done):
            continue
        _seed(recipe.data.seed + i)
        rss = RssSampler()
        t0 = time.perf_counter()
        with rss:
            record = apply_technique(lm.model, cfg, ctx)
        wall = time.perf_counter() - t0
        name = f"stages/{i + 1:02d}-{cfg.kind}"
        ckpt = out / name
        last = i == len(recipe.stages) - 1
        record = _jsonable(record)
        info = _save(
            lm,
            ckpt,
            {"name": f"{recipe.name}-stage{i + 1}", "stage": record},
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
                "record": record,
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

    final = done[-1]["metrics"] if done else baseline["metrics"]
    verdicts = check_targets(recipe.targets, final, baseline["metrics"])
    res = RunResult(out, recipe, baseline, done, final, verdicts, resumed_from=resumed)
    art = out / "artifact"
    manifest = {
        "name": recipe.name,
        "recipe": recipe.to_dict(),
        "recipe_digest": recipe.digest(),
        "stages": done,
        "metrics": {k: v for k, v in final.items() if isinstance(v, (int, float))},
        "baseline_metrics": {
            k: v for k, v in baseline["metrics"].items() if isinstance(v, (int, float))
        },
        "targets": [v.to_dict() for v in verdicts],
        "data_fingerprint": _fingerprint(ctx),
        "seed": recipe.data.seed,
        "teacher": baseline["model"],
    }
    info = _save(lm, art, manifest, baseline["digest"], registry_home)
    res.artifact, res.digest = art, info.digest
    # the final artifact's own size is what a user ships: re-check size with it
    final["size/bytes"] = float(info.size_bytes)
    res.verdicts = check_targets(recipe.targets, final, baseline["metrics"])
    run.state.update(
        {
            "status": "finished",
            "finished_at": _now(),
            "wall_s": run.state.get("wall_s", 0.0) + time.perf_counter() - t_start,
            "artifact": "artifact",
            "digest": info.digest,
            "verdicts": [v.to_dict() for v in res.verdicts],
            "student": _describe(lm),
        }
    )
    if register:
        res.registered = _register(recipe, base_dir, art, registry_home)
        run.state["registered"] = res.registered
    run.save_state()
    if report:
        from slimline.report import write_report

        res.report, res.card = write_report(out)
    return res


def _register(recipe: Recipe, base: Path, art: Path, home: Any) -> dict[str, Any]:
    from slimline.registry import Registry

    reg = Registry(home)
    b = reg.register(base, f"{recipe.name}-baseline")
    v = reg.register(art, recipe.name, parent=b.ref)
    return {"ref": v.ref, "digest": v.digest, "parent": b.ref, "home": str(reg.home)}


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


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v, default=_default))


def _default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist() if o.numel() <= 4096 else f"tensor{tuple(o.shape)}"
    if isinstance(o, Path):
        return str(o)
    return str(o)
