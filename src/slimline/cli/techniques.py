"""`slimline techniques [KIND]`: the registered techniques and the fields each config takes
(what a recipe stage or a config error refers to)."""

from __future__ import annotations

import typer

from slimline.cli._common import emit_json, out


def _fields(cfg: type) -> list[dict[str, str]]:
    rows = []
    for name, f in cfg.model_fields.items():
        ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        rows.append({"field": name, "type": ann, "default": default})
    return rows


def register(app: typer.Typer) -> None:
    @app.command("techniques")
    def techniques_cmd(
        kind: str = typer.Argument(None, help="one technique, e.g. quant.gptq (none: list all)"),
        json_out: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """List the techniques a recipe stage can name, or the config fields of one."""
        from rich.table import Table

        from slimline.core import get_technique, techniques

        if kind is None:
            rows = [{"kind": k, "summary": t.summary} for k, t in techniques().items()]
            if json_out:
                emit_json(rows)
                return
            t = Table(title="techniques (`slimline techniques KIND` shows its fields)")
            t.add_column("kind")
            t.add_column("summary")
            for r in rows:
                t.add_row(r["kind"], r["summary"])
            out.print(t)
            return
        rows = _fields(get_technique(kind).config)  # an unknown kind is a ConfigError naming all
        if json_out:
            emit_json(rows)
            return
        t = Table(title=f"{kind}: config fields")
        for c in ("field", "type", "default"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["field"], r["type"], r["default"])
        out.print(t, markup=False)
