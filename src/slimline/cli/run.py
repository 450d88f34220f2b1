"""`slimline run [RECIPE]`: the main job. `slimline report RUN_DIR`: re-render a run's report."""

from __future__ import annotations

from pathlib import Path

import typer

from slimline.cli._common import emit_json, out


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        recipe: str = typer.Argument("default", help="recipe file or shipped template name"),
        output: Path = typer.Option(None, "-o", "--output", help="run dir (default runs/<name>)"),
        resume: bool = typer.Option(
            None,
            "--resume/--fresh",
            help="resume (must exist) / start fresh, replacing an old run (default: resume if same recipe)",
        ),
        no_register: bool = typer.Option(
            False, "--no-register", help="do not add it to the registry"
        ),
        threads: int = typer.Option(2, "--threads", help="torch threads while compressing"),
        json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
        workers: int = typer.Option(
            1, "--workers", help="a recipe with search: worker processes on this machine"
        ),
    ) -> None:
        """Run a recipe: baseline, stages (checkpointed, resumable), targets, artifact, registry, report.
        A recipe with a search: section runs its study instead and reports the Pareto front."""
        from slimline.recipe import load_recipe, run_recipe

        rec = load_recipe(recipe, check=False)  # a plain recipe is checked by run_recipe
        if rec.search is not None:
            from slimline.cli.search import print_search
            from slimline.search import run_search

            found = run_search(
                load_recipe(recipe),
                output,
                workers=workers,
                register=not no_register,
                threads=threads,
            )
            if json_out:
                emit_json(found.to_dict())
            else:
                print_search(found)
            return
        res = run_recipe(recipe, output, resume=resume, register=not no_register, threads=threads)
        if "follower" in res.extra:  # another process of `accelerate launch`: the main one prints
            return
        if json_out:
            emit_json(
                {
                    "run_dir": str(res.run_dir),
                    "artifact": str(res.artifact),
                    "digest": res.digest,
                    "registered": res.registered,
                    "report": str(res.report),
                    "model_card": str(res.card),
                    "resumed_stages": res.resumed_from,
                    "replaced": str(res.extra["replaced"]) if res.extra.get("replaced") else None,
                    "verdicts": [v.to_dict() for v in res.verdicts],
                    "metrics": {k: v for k, v in res.final.items() if isinstance(v, (int, float))},
                }
            )
            return
        _print_verdicts(res.verdicts)
        if res.extra.get("replaced"):
            out.print(
                f"the previous run was moved to {res.extra['replaced']} (delete it when sure)"
            )
        if res.resumed_from:
            out.print(f"resumed: {res.resumed_from} stage(s) taken from checkpoints")
        out.print(f"artifact: {res.artifact} ({res.digest[:16] if res.digest else '—'})")
        if res.registered:
            out.print(f"registered: {res.registered['ref']} (parent {res.registered['parent']})")
        out.print(f"report: {res.report}")
        out.print(f"model card: {res.card}")

    @app.command("report")
    def report(
        run_dir: Path = typer.Argument(..., help="a run dir made by `slimline run`"),
    ) -> None:
        """Re-render report.html and MODEL_CARD.md of a finished run."""
        from slimline.report import write_report

        html, card = write_report(run_dir)
        out.print(f"report: {html}\nmodel card: {card}")


def _print_verdicts(verdicts: list) -> None:
    from rich.table import Table

    colour = {"met": "green", "missed": "red", "not measured": "yellow"}
    t = Table(title="targets")
    t.add_column("target")
    t.add_column("verdict")
    t.add_column("detail")
    for v in verdicts:
        t.add_row(v.target, f"[{colour[v.status]}]{v.status}[/]", v.text)
    if verdicts:
        out.print(t)
    else:
        out.print("no targets declared")
