"""`slimline search worker STUDY` joins a running study; `slimline search report STUDY` prints
its front. A recipe's search itself starts with `slimline run RECIPE`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from slimline.cli._common import emit_json, out

search_app = typer.Typer(
    help="Join or report a multi-objective search (a recipe's search: section).",
    no_args_is_help=True,
)

STORAGE = typer.Option(..., "--storage", help="the study's storage: a SQLite file or database URL")
RUN_DIR = typer.Option(
    None, "--run-dir", help="where this worker's trials go (default: beside a SQLite file)"
)


def register(app: typer.Typer) -> None:
    app.add_typer(search_app, name="search")


@search_app.command("worker")
def worker(
    study: str = typer.Argument(..., help="the study name (`slimline run` prints it)"),
    storage: str = STORAGE,
    run_dir: Path = RUN_DIR,
    index: int = typer.Option(None, "--index", help="worker number (seeds its sampler)"),
    threads: int = typer.Option(2, "--threads", help="torch threads per trial"),
    no_register: bool = typer.Option(False, "--no-register", help="do not register candidates"),
) -> None:
    """Run trials of STUDY until its budget is spent (a killed worker's trial is failed and redone)."""
    from slimline.search import join_study

    ran = join_study(
        study, storage, run_dir, index=index, register=not no_register, threads=threads
    )
    out.print(f"{len(ran)} trial(s) run by this worker: {ran}")


@search_app.command("report")
def report(
    study: str = typer.Argument(..., help="the study name"),
    storage: str = STORAGE,
    run_dir: Path = RUN_DIR,
    json_out: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """The study's Pareto front, and its best trial under the targets or the nearest misses."""
    from slimline.search import report_study

    res = report_study(study, storage, run_dir)
    if json_out:
        emit_json(res.to_dict())
        return
    print_search(res)


def _fmt(metric: str, v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "—"
    if metric == "size/bytes":
        return f"{v / 1e6:.2f} MB"
    return f"{v:.4g}"


def print_search(res: Any) -> None:
    """The front as a table, then the chosen trial or the nearest misses, then where things are."""
    on_front = {t.number for t in res.front}
    objs = list(res.objectives)
    keys = sorted({k for t in res.trials for k in t.params})
    t = Table(title=f"search {res.study}: {len(res.trials)} finished, front of {len(on_front)}")
    heads = [f"stage {k} present" if k.isdigit() else k for k in keys]
    for c in ["trial", *heads, *objs, "front", "targets"]:
        t.add_column(escape(c))
    for tr in sorted(res.trials, key=lambda x: x.number):
        t.add_row(
            str(tr.number) + (f" (= {tr.same_as})" if tr.same_as is not None else ""),
            *[str(tr.params.get(k, "")) for k in keys],
            *[_fmt(m, tr.metrics.get(m)) for m in objs],
            "[bold]yes[/]" if tr.number in on_front else "",
            "[green]all met[/]" if tr.feasible else "[red]missed[/]",
        )
    out.print(t)
    for p in res.pruned:
        out.print(escape(f"trial {p['trial']} pruned: {p['reason']}"))
    for f in res.failed:
        out.print(escape(f"trial {f['trial']} failed: {f['reason']}"))
    if res.best is not None:
        b = res.best
        out.print(
            f"[green]best trial meeting every target: {b.number}[/] "
            + escape(str(b.params) + (f" -> registered {b.registered}" if b.registered else ""))
        )
    else:
        out.print("[red]no trial meets every target[/]; nearest:")
        for n in res.nearest:
            misses = "; ".join(
                f"{g['target']} by {g['gap']:.1%}" if g["gap"] is not None else g["text"]
                for g in n["misses"]
            )
            out.print(escape(f"  trial {n['trial']} {n['params']}: {misses}"))
    if res.plot:
        out.print(f"front plot: {res.plot}")
    out.print(f"summary: {res.summary}\nstudy: {res.study} at {res.storage}")
