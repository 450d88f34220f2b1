"""`slimline cascade`: generate with a small model that falls back to a trustworthy one."""

from __future__ import annotations

from pathlib import Path

import typer

from slimline.cli._common import emit_json, out


def register(app: typer.Typer) -> None:
    @app.command("cascade")
    def cascade(
        small: str = typer.Argument(
            ..., help="the compressed model (bundled name, path or artifact)"
        ),
        large: str = typer.Argument(..., help="the trustworthy model it falls back to"),
        prompt: str = typer.Option(..., "--prompt", "-p"),
        threshold: float = typer.Option(
            0.5, help="minimum confidence to keep the small model's token"
        ),
        granularity: str = typer.Option("token", help="token | sequence"),
        max_new_tokens: int = typer.Option(32),
        log: Path | None = typer.Option(None, help="append every decision to this JSONL file"),
        json_out: bool = typer.Option(False, "--json"),
    ) -> None:
        """Generate with SMALL; when its confidence drops below THRESHOLD, LARGE decides."""
        from slimline.models import load_model
        from slimline.outputs import check_output
        from slimline.serve import Cascade, CascadeConfig

        if log is not None:  # appended to: an existing file is fine, an unwritable one is not
            check_output(log, kind="file", replace=True, what="--log file")
        cfg = CascadeConfig(
            threshold=threshold, granularity=granularity, max_new_tokens=max_new_tokens
        )  # type: ignore[arg-type]
        res = Cascade(load_model(small), load_model(large), cfg, log_path=log).generate(prompt)
        if json_out:
            emit_json(
                {
                    "text": res.text,
                    "fallback_rate": res.fallback_rate,
                    "decisions": [d.__dict__ for d in res.decisions],
                }
            )
        else:
            out.print(res.text)
            out.print(
                f"[dim]fallback to {large}: {res.fallback_rate:.0%} of {len(res.decisions)} decisions[/dim]"
            )
