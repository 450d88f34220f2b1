"""Helpers shared by CLI modules: JSON output and rich tables."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

out = Console()


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def kv_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    return table
