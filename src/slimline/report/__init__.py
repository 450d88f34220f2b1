"""Reports: one self-contained HTML file (plots embedded as base64 PNG) and a markdown model
card, both built from a run dir's ``run.json`` so a finished run can be re-reported any time."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from slimline.errors import InputError
from slimline.outputs import check_output
from slimline.report.card import SECTIONS, fmt, model_card
from slimline.report.plots import heatmap, quality_vs_latency, quality_vs_size, suite_figures

REPORT, CARD = "report.html", "MODEL_CARD.md"

__all__ = [
    "CARD",
    "REPORT",
    "SECTIONS",
    "check_finished",
    "model_card",
    "read_run",
    "render_html",
    "write_report",
]


def read_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``run.json`` of a run dir (what the runner recorded), checked to be one
    ``slimline run`` wrote: ``InputError`` for anything else."""
    from slimline.runstate import read_run_state

    return read_run_state(run_dir)


def check_finished(state: dict[str, Any], run_dir: str | os.PathLike[str]) -> None:
    """A report describes a finished run only: its final model, artifact and verdicts."""
    if state.get("status") == "finished" and isinstance(state.get("baseline"), dict):
        return
    n = len(state.get("recipe", {}).get("stages") or [])
    raise InputError(
        f"{run_dir} is an unfinished run (status {state.get('status')!r}, "
        f"{len(state.get('stages') or [])} of {n} stages done, no final artifact), so there is "
        "nothing to report yet",
        f"finish it first: `slimline run {Path(run_dir) / 'recipe.yaml'} -o {run_dir}` resumes it",
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def render_html(state: dict[str, Any], card: str | None = None, root: Path | None = None) -> str:
    """The report as one HTML string (no external files: images are data URIs); ``root``, the
    run dir, is where the evaluation suite's figures are read from."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("slimline.report", "."), autoescape=select_autoescape(["html"])
    )
    stages = state["stages"]
    base = state["baseline"]["metrics"]
    keys = [
        k
        for k, v in base.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith("_range")
    ]
    plots = [
        (title, img)
        for title, img in (
            ("quality vs size on disk (targets dashed)", quality_vs_size(state)),
            ("quality vs prefill latency (targets dashed)", quality_vs_latency(state)),
        )
        if img
    ]
    heat = [
        (f"stage {s['index']}: {s['kind']}", img)
        for s in stages
        if (img := heatmap(s.get("record") or {}, f"stage {s['index']} {s['kind']}"))
    ]

    def params(s: dict[str, Any]) -> str:
        return json.dumps(
            {k: v for k, v in (s.get("config") or {}).items() if k not in ("kind", "version")}
        )

    return env.get_template(REPORT).render(
        state=state,
        r=state["recipe"],
        stages=stages,
        base=base,
        keys=keys,
        verdicts=state.get("verdicts") or [],
        plots=plots,
        heatmaps=heat,
        suite=state.get("suite"),
        suite_figures=suite_figures(state, root),
        card=card if card is not None else model_card(state),
        fmt=fmt,
        show=show,
        params=params,
    )


def show(metric: str, v: Any) -> str:
    """A metric for a table cell: sizes in MB, counts with separators, the rest to 4 digits."""
    if metric == "size/bytes" and isinstance(v, (int, float)):
        return f"{v / 1e6:,.1f} MB"
    return fmt(v)


def write_report(run_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``report.html`` and ``MODEL_CARD.md`` into ``run_dir``; return their paths."""
    root = Path(run_dir)
    state = read_run(root)
    check_finished(state, root)
    check_output(root, replace=True, what="run dir")  # the report goes beside run.json
    card = model_card(state)
    html = render_html(state, card, root)
    _atomic_write(root / CARD, card)
    _atomic_write(root / REPORT, html)
    return root / REPORT, root / CARD
