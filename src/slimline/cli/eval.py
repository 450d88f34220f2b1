"""`slimline eval MODEL`: perplexity, bits per byte, calibration and agreement with a reference."""

from __future__ import annotations

import typer

from slimline.cli._common import emit_json, kv_table, out


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        model: str = typer.Argument(
            ..., help="bundled name, model directory, GGUF file or artifact"
        ),
        data: list[str] = typer.Option(
            ["python-docs"], "--data", help="python-docs, shakespeare or a text file (repeatable)"
        ),
        reference: str | None = typer.Option(
            None,
            "--reference",
            help="compare with this model (KL, top-1 agreement; required for encoders)",
        ),
        windows: int = typer.Option(
            64, "--windows", help="at most this many eval windows per dataset"
        ),
        seq_len: int = typer.Option(512, "--seq-len", help="tokens per window"),
        suite: str = typer.Option("default", "--suite", help="default (all metrics) or ppl"),
        threads: int = typer.Option(2, "--threads", help="torch CPU threads"),
        json_out: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Evaluate MODEL on the eval part of each --data source."""
        import torch

        from slimline.eval import evaluate
        from slimline.models import load_model

        torch.set_num_threads(threads)
        lm = load_model(model)
        ref = load_model(reference) if reference else None
        metrics = evaluate(
            lm, data=data, reference=ref, windows=windows, seq_len=seq_len, suite=suite
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
