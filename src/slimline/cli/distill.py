"""`slimline distill`: a thin wrapper over slimline.distill.distill."""

from __future__ import annotations

from pathlib import Path

import typer

from slimline.cli._common import emit_json, kv_table, out
from slimline.errors import ConfigError


def _losses(spec: str) -> dict[str, float]:
    """ "kl=1,hidden=0.1" -> {"kl": 1.0, "hidden": 0.1}."""
    res: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        k, eq, v = item.partition("=")
        try:
            res[k.strip()] = float(v) if eq else 1.0
        except ValueError as e:
            raise ConfigError(
                f"cannot read loss weight {item!r}", "use e.g. --losses kl=1,ce=0.1"
            ) from e
    return res


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill_cmd(
        teacher: str = typer.Option(
            ..., "--teacher", help="teacher model (bundled name, dir, GGUF)"
        ),
        student_from: str = typer.Option(
            None,
            "--student-from",
            help="cut from a model: MODEL:keep=N (blocks ranked by angular distance; add ,importance=even for evenly spaced) | MODEL:drop-every=K | MODEL:mlp=0.5",
        ),
        student: str = typer.Option(None, "--student", help="an existing student model instead"),
        data: str = typer.Option(
            "python-docs", "--data", help="text source: python-docs, shakespeare, a file"
        ),
        output: Path = typer.Option(..., "-o", "--output", help="output directory"),
        max_steps: int = typer.Option(
            100, "--max-steps", help="optimizer steps; 0 writes the cut student untrained"
        ),
        minutes: float = typer.Option(None, "--minutes", help="stop after this wall time"),
        losses: str = typer.Option(
            "kl=0.5,ce=0.5", "--losses", help="weights, e.g. kl=1,hidden=0.1,ce=0.1"
        ),
        temperature: float = typer.Option(2.0, "--temperature"),
        seq_len: int = typer.Option(256, "--seq-len"),
        batch_size: int = typer.Option(4, "--batch-size"),
        grad_accum: int = typer.Option(1, "--grad-accum"),
        lr: float = typer.Option(1e-4, "--lr"),
        warmup: int = typer.Option(0, "--warmup-steps"),
        checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="0 = only at the end"),
        prune_sparsity: float = typer.Option(
            None, "--prune-sparsity", help="gradual magnitude pruning target"
        ),
        seed: int = typer.Option(0, "--seed"),
        resume: bool = typer.Option(
            False, "--resume", help="continue from the last checkpoint in OUT"
        ),
        run_dir: str = typer.Option(
            None, "--run-dir", help="run dir (trace, checkpoints, report); default under the home"
        ),
        no_register: bool = typer.Option(
            False, "--no-register", help="do not add it to the registry"
        ),
        threads: int = typer.Option(2, "--threads", help="torch threads while compressing"),
        as_json: bool = typer.Option(False, "--json", help="print the run record as JSON"),
    ) -> None:
        """Distil a teacher into a smaller student (cut from the teacher, or given), run as a
        recipe: the student artifact goes to OUTPUT/model, the run (trace, checkpoints, report)
        to the run dir; --resume continues training there (e.g. with more --max-steps).
        Under `accelerate launch --num_processes N` it trains data-parallel; only the main
        process writes the artifact, the run dir and the registry row."""
        from slimline.core import TechniqueConfig, make_config
        from slimline.distill.student import parse_student_spec
        from slimline.recipe.compress import compress, compress_recipe, summary
        from slimline.recipe.schema import DataSplit

        if (student_from is None) == (student is None):
            raise ConfigError(
                "give exactly one of --student-from or --student",
                "e.g. --student-from smollm2-135m:keep=20",
            )
        stages: list[TechniqueConfig] = []
        if student_from is not None:
            base, params = parse_student_spec(student_from)
            if not params:
                raise ConfigError(
                    f"--student-from {student_from!r} says no cut", "add :keep=N or :drop-every=K"
                )
            if base != teacher:
                raise ConfigError(
                    f"--student-from cuts {base!r} but the teacher is {teacher!r}",
                    "cut the student from the teacher, or pass a ready model with --student",
                )
            stages.append(make_config("distill.student", params))
        stages.append(
            make_config(
                "distill",
                dict(
                    teacher="base" if student is None else teacher,
                    losses=_losses(losses),
                    temperature=temperature,
                    data=data,
                    seq_len=seq_len,
                    batch_size=batch_size,
                    grad_accum=grad_accum,
                    max_steps=max_steps,
                    minutes=minutes,
                    lr=lr,
                    warmup_steps=warmup,
                    checkpoint_every=checkpoint_every,
                    prune_sparsity=prune_sparsity,
                    seed=seed,
                ),
            )
        )
        recipe = compress_recipe(
            "distill",
            teacher if student is None else student,
            stages,
            # angular block ranking: 8 windows of 128 tokens, as `slimline.distill.build_student`
            calibration=DataSplit(n=8, seq_len=128),
            seed=seed,
        )
        run = compress(
            recipe,
            Path(output) / "model",
            replace=True,
            what="student model dir",
            run_dir=run_dir,
            resume=True if resume else None,
            register=not no_register,
            threads=threads,
        )
        if "follower" in run.extra:  # another process of `accelerate launch`: the main one prints
            return
        res = summary(run)
        rec = {
            **res["details"],
            "model_dir": res["out"],
            "student": res["stages"][0]["details"] if len(res["stages"]) > 1 else None,
            **{k: res[k] for k in ("run_dir", "digest", "registered", "size_bytes", "params")},
        }
        if as_json:
            emit_json(rec)
        else:
            out.print(
                kv_table(
                    f"distilled -> {res['out']}",
                    {k: v for k, v in rec.items() if not isinstance(v, (dict, list))},
                )
            )
