"""`slimline export`: write a model for the engine that will serve it."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model: str = typer.Argument(..., help="bundled name, path or slimline artifact"),
        output: Path = typer.Option(..., "-o", "--output", help="the .gguf file to write"),
        qtype: str = typer.Option("f16", help="f32 | f16 | q8_0 | q4_0 | q4_1"),
        pre: str = typer.Option("smollm", help="llama.cpp pre-tokenizer name"),
    ) -> None:
        """Export a llama-family model (compressed layers included) to GGUF for llama.cpp."""
        from slimline.export import export_gguf
        from slimline.models import load_model

        lm = load_model(model)
        path = export_gguf(lm.model, lm.tokenizer, output, qtype=qtype, pre=pre)
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {qtype})")
