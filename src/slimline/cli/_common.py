"""Helpers shared by CLI modules: JSON output and rich tables."""

from __future__ import annotations

import json
import math
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

out = Console()


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON data: NaN/Inf floats become the strings "nan", "inf", "-inf"
    (JSON has no such numbers; ``float()`` reads them back), numpy/torch scalars become numbers,
    anything else unknown becomes its ``str``."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if callable(getattr(value, "item", None)) and getattr(value, "shape", None) == ():
        return jsonable(value.item())
    return str(value)


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON that every parser accepts (never a bare NaN or Infinity)."""
    typer.echo(json.dumps(jsonable(data), indent=2, allow_nan=False))


def kv_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    return table
