"""`slimline recipe validate|list|show`: recipes as data, checked before anything runs."""

from __future__ import annotations

import typer

from slimline.cli._common import emit_json, out


def register(app: typer.Typer) -> None:
    recipe = typer.Typer(help="Validate, list and show recipes.", no_args_is_help=True)
    app.add_typer(recipe, name="recipe")

    @recipe.command("validate")
    def validate(
        file: str = typer.Argument(..., help="recipe file or shipped template name"),
        no_model: bool = typer.Option(
            False, "--no-model", help="skip the checks that read the model"
        ),
        json_out: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Validate a recipe: fields, stage kinds and parameters, targets, and that the model loads."""
        from slimline.recipe import check_recipe, load_recipe

        r = load_recipe(file, check=False)
        found = check_recipe(r, model=not no_model)
        if json_out:
            emit_json({"ok": True, "recipe": r.to_dict(), "digest": r.digest(), **found})
            return
        out.print(
            f"ok: {r.name} — model {r.model}, {len(r.stages)} stage(s): "
            + ", ".join(s.kind for s in r.stages)
        )
        if found.get("size_lower_bound_mb") is not None:
            out.print(
                f"smallest size these stages can reach: {found['size_lower_bound_mb']:.1f} MB"
            )

    @recipe.command("list")
    def list_recipes(json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
        """List the shipped recipe templates."""
        from rich.table import Table

        from slimline.recipe import load_recipe, shipped_recipes

        rows = []
        for name, path in shipped_recipes().items():
            try:
                r = load_recipe(path, check=False)
                rows.append(
                    {
                        "name": name,
                        "model": r.model,
                        "stages": [s.kind for s in r.stages],
                        "description": r.description,
                        "path": str(path),
                    }
                )
            except Exception as e:  # a template whose technique is not installed: say so, go on
                rows.append(
                    {
                        "name": name,
                        "model": "",
                        "stages": [],
                        "description": f"invalid: {e}",
                        "path": str(path),
                    }
                )
        if json_out:
            emit_json(rows)
            return
        t = Table(title="recipe templates (`slimline recipe show NAME`)")
        for col in ("name", "model", "stages", "description"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["name"], r["model"], " → ".join(r["stages"]), r["description"])
        out.print(t)

    @recipe.command("show")
    def show(name: str = typer.Argument(..., help="template name or recipe file")) -> None:
        """Print a template's YAML (copy it to start your own recipe)."""
        from slimline.recipe.schema import resolve_recipe_path

        typer.echo(resolve_recipe_path(name).read_text(), nl=False)
