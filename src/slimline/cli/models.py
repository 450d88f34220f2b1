"""`slimline models ...`: the bundled models and the architecture map."""

from __future__ import annotations

import typer

from slimline.cli._common import emit_json, out


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="Bundled models and supported architectures.", no_args_is_help=True)
    app.add_typer(models, name="models")

    @models.command("list")
    def list_models(json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
        """List the bundled real models and the supported architecture families."""
        from rich.table import Table

        from slimline.models import BUNDLED, supported_families

        rows = [
            {"name": b.name, "kind": b.kind, "package": b.package, "description": b.description}
            for b in BUNDLED.values()
        ]
        if json_out:
            emit_json({"bundled": rows, "families": supported_families()})
            return
        table = Table(title="bundled models")
        for col in ("name", "kind", "package", "description"):
            table.add_column(col)
        for r in rows:
            table.add_row(*r.values())
        out.print(table)
        out.print(f"supported families: {', '.join(supported_families())}")

    @models.command("families")
    def families(
        model: str = typer.Argument(None, help="also report this model (path or bundled name)"),
        json_out: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Which capabilities each family supports, asked of each capability's own guard."""
        from rich.markup import escape
        from rich.table import Table

        from slimline.models.families import CAPABILITIES, family_table, report

        reports = family_table()
        if model:
            from slimline.models import load_model

            reports.append(report(load_model(model).model))
        if json_out:
            emit_json({"families": [r.to_dict() for r in reports]})
            return
        table = Table(title="capabilities per family (yes = the code path accepts it)")
        for col in ("family", "arch", *CAPABILITIES):
            table.add_column(col)
        for r in reports:
            cells = ["yes" if ok else "no" for ok, _ in r.capabilities.values()]
            table.add_row(f"{r.model_type} ({r.family})", r.source, *cells)
        out.print(table)
        for r in reports:
            notes = [f"{k}: {d}" for k, (ok, d) in r.capabilities.items() if d]
            if r.specifics or notes:
                out.print(f"[bold]{r.model_type}[/bold]: {', '.join(r.specifics) or 'plain'}")
                for n in notes:
                    out.print(f"  {escape(n)}")

    @models.command("prepare")
    def prepare() -> None:
        """Convert the bundled models once into the cache (done on first use otherwise)."""
        from slimline.models import BUNDLED, bundled_path

        for name in BUNDLED:
            typer.echo(f"{name}: {bundled_path(name)}")
