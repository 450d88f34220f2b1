"""`slimline eval MODEL`: a suite of evaluation tasks against a reference, judged by gates
(``--suite default``), or perplexity / bits per byte alone (``--suite ppl``)."""

from __future__ import annotations

import typer
from rich.table import Table

from slimline.cli._common import emit_json, kv_table, out


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        model: str = typer.Argument(
            ..., help="bundled name, model directory, GGUF file or artifact"
        ),
        data: list[str] | None = typer.Option(
            None,
            "--data",
            help="python-docs, shakespeare or a text file (repeatable; default python-docs, "
            "and shakespeare too in suites)",
        ),
        reference: str | None = typer.Option(
            None,
            "--reference",
            help="compare with this model (KL, top-1 agreement; required for encoders)",
        ),
        windows: int | None = typer.Option(
            None, "--windows", help="at most this many eval windows per dataset (ppl: 64)"
        ),
        seq_len: int = typer.Option(512, "--seq-len", help="tokens per window"),
        suite: str = typer.Option(
            "default", "--suite", help="default, long, full, encoder (tasks + gates) or ppl"
        ),
        task: list[str] | None = typer.Option(
            None, "--task", help="run only these tasks of the suite's registry (repeatable)"
        ),
        gate: list[str] | None = typer.Option(
            None, "--gate", help="an extra gate, e.g. 'kl/p99/python-docs <= 0.5' (repeatable)"
        ),
        strict: bool = typer.Option(False, "--strict", help="exit 1 when a gate fails"),
        limit: int | None = typer.Option(
            None, "--limit", help="at most this many items per task (a quick smoke run)"
        ),
        figures: str | None = typer.Option(
            None, "--figures", help="write figures (reliability diagram PNG) into this folder"
        ),
        threads: int = typer.Option(2, "--threads", help="torch CPU threads"),
        engine: str = typer.Option(
            "torch",
            "--engine",
            help="run MODEL in this engine for the suite: torch | llamacpp (a GGUF file, or the "
            "model exported to one, its grids kept) | onnxruntime; the reference stays in torch",
        ),
        n_ctx: int = typer.Option(
            2048, "--n-ctx", help="engine context (longer long-context items are skipped)"
        ),
        json_out: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Evaluate MODEL on the eval part of each --data source."""
        from slimline.core import set_threads
        from slimline.data import eval_blocks
        from slimline.eval import evaluate
        from slimline.models import load_model
        from slimline.models.checks import check_finite_metrics

        set_threads(threads)  # a bad count is an error line, not a torch traceback
        lm = load_model(model)
        ref = load_model(reference) if reference else None
        if suite != "ppl":
            _run_suite(
                model, reference, lm, ref, suite, data, windows, seq_len, task, gate, strict,
                limit, figures, json_out, engine, threads, n_ctx,
            )  # fmt: skip
            return
        if engine != "torch":
            from slimline.errors import ConfigError

            raise ConfigError(
                "--suite ppl runs in torch only", "use --suite default with --engine " + engine
            )
        data = data or ["python-docs"]
        windows = 64 if windows is None else windows
        metrics = evaluate(
            lm, data=data, reference=ref, windows=windows, seq_len=seq_len, suite=suite
        )
        check_finite_metrics(  # NaN/Inf is an error naming the module, never a printed "nan"
            metrics,
            model,
            lm.model,
            lambda: eval_blocks(lm.tokenizer, data[0], seq_len=seq_len, max_blocks=1),
        )
        if json_out:
            emit_json(
                {
                    "model": model,
                    "reference": reference,
                    "windows": windows,
                    "seq_len": seq_len,
                    "metrics": metrics,
                }
            )
            return
        out.print(kv_table(f"{model}" + (f" vs {reference}" if reference else ""), metrics))


def _run_suite(
    model: str,
    reference: str | None,
    lm: object,
    ref: object,
    suite: str,
    data: list[str] | None,
    windows: int | None,
    seq_len: int,
    tasks: list[str] | None,
    gates: list[str] | None,
    strict: bool,
    limit: int | None,
    figures: str | None,
    json_out: bool,
    engine: str = "torch",
    threads: int = 2,
    n_ctx: int = 2048,
) -> None:
    """Run a named suite and print every metric, the verdicts and what was skipped."""
    from slimline.errors import ConfigError
    from slimline.eval import get_suite, run_suite
    from slimline.models.checks import check_finite_metrics

    get_suite(suite)  # an unknown name fails before any model runs
    if windows is not None and windows < 1:
        raise ConfigError(f"windows must be at least 1 (got {windows})", "pass --windows 1 or more")
    over: dict[str, dict[str, object]] = {}
    for name in ("tail", "domain"):
        over[name] = {"seq_len": seq_len}
        if windows is not None:
            over[name]["windows"] = windows
    if data:
        over["tail"]["datasets"] = tuple(data)
        over["domain"].update(home=data[0], shifted=tuple(data[1:]) or ("shakespeare",))
    subject: object = lm
    served = None
    if engine != "torch":  # judge the file the engine serves, not its torch original
        from slimline.engines import is_gguf, load_engine
        from slimline.eval.engine import ServedEngine

        served = load_engine(engine, model if is_gguf(model) else lm, threads=threads, n_ctx=n_ctx)
        subject = ServedEngine(served, lm.tokenizer, name=f"{model} in {engine}")  # type: ignore[attr-defined]
    try:
        report = run_suite(
            subject, suite=suite, reference=ref, tasks=tasks, gates=gates, overrides=over,
            limit=limit, figures_dir=figures,
        )  # fmt: skip
    finally:
        if served is not None:
            served.close()
    check_finite_metrics(report.metrics, model, lm.model, None)  # type: ignore[attr-defined]
    if json_out:
        d = report.to_dict()
        d["reference_metrics"] = d.pop("reference")
        emit_json({"model": model, "reference": reference, **d})
    else:
        out.print(kv_table(f"{model}" + (f" vs {reference}" if reference else ""), report.metrics))
        table = Table(title=f"gates ({suite})")
        for col in ("metric", "value", "limit", "passed"):
            table.add_column(col)
        for v in report.verdicts:
            ok = "[green]pass[/green]" if v["passed"] else "[red]FAIL[/red]"
            table.add_row(v["metric"], f"{v['value']:.4g}", f"{v['limit']:.4g}", ok)
        out.print(table)
        for s in report.skipped:
            out.print(f"skipped: {s}")
    if strict and not report.passed:
        failed = ", ".join(v["metric"] for v in report.failed())
        typer.echo(f"error: gates failed: {failed}", err=True)
        raise typer.Exit(code=1)
