"""Report plots as base64 PNG (embedded in one self-contained HTML file): quality vs size and
quality vs latency for the baseline and every stage, with the targets as limit lines, and a
per-layer heat map (stored bits or sparsity) for each stage whose typed record
(``slimline.core.StageRecord``) lists changed modules inside the blocks."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def quality_metric(state: dict[str, Any]) -> str | None:
    """The metric on the plots' quality axis: the first perplexity measured."""
    base = state["baseline"]["metrics"]
    ppl = [k for k in base if k.startswith("ppl/")]
    return ppl[0] if ppl else None


def _points(state: dict[str, Any], metric: str) -> list[tuple[str, dict[str, Any]]]:
    pts = [("baseline", state["baseline"]["metrics"])]
    for s in state["stages"]:
        pts.append((f"{s['index']}: {s['kind']}", s["metrics"]))
    return [(n, m) for n, m in pts if isinstance(m.get(metric), (int, float))]


def _quality_limit(state: dict[str, Any], metric: str) -> float | None:
    """The absolute limit the run's verdict compared ``metric`` with (the runner resolved the
    ratio or delta against the baseline; the report only reads it)."""
    for v in state.get("verdicts") or []:
        if v.get("target", "").startswith("max_quality_loss") and v.get("metric") == metric:
            lim = v.get("limit")
            return float(lim) if isinstance(lim, (int, float)) else None
    return None


def _scatter(
    state: dict[str, Any],
    metric: str,
    x_key: str,
    x_scale: float,
    x_label: str,
    x_limit: float | None,
) -> str | None:
    pts = [(n, m) for n, m in _points(state, metric) if isinstance(m.get(x_key), (int, float))]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(4.9, 3.4))
    xs = [m[x_key] / x_scale for _, m in pts]
    ys = [m[metric] for _, m in pts]
    ax.plot(xs, ys, "-", color="#999", lw=1, zorder=1)
    for i, ((name, _), x, y) in enumerate(zip(pts, xs, ys, strict=True)):
        ax.scatter([x], [y], s=60, zorder=2, color="#444" if i == 0 else f"C{i}", label=name)
        ax.annotate(
            name.split(": ")[0], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8
        )
    q = _quality_limit(state, metric)
    if q is not None:
        ax.axhline(q, color="crimson", ls="--", lw=1.2, label=f"max {metric} {q:.4g}")
    if x_limit is not None:
        ax.axvline(x_limit, color="darkorange", ls="--", lw=1.2, label=f"limit {x_limit:g}")
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def quality_vs_size(state: dict[str, Any]) -> str | None:
    metric = quality_metric(state)
    if metric is None:
        return None
    lim = (state["recipe"].get("targets") or {}).get("max_size_mb")
    return _scatter(state, metric, "size/bytes", 1e6, "size on disk (MB)", lim)


def quality_vs_latency(state: dict[str, Any]) -> str | None:
    metric = quality_metric(state)
    if metric is None:
        return None
    t = (state["recipe"].get("targets") or {}).get("max_prefill_ms")
    lim = t.get("value") if isinstance(t, dict) else None
    setup = state["baseline"]["metrics"].get("latency/setup") or {}
    label = "prefill latency (ms)"
    if setup:
        label += f" — {setup.get('prefill_tokens')} tokens, {setup.get('engine')}, {setup.get('threads')} threads"
    return _scatter(state, metric, "latency/prefill_ms", 1.0, label, lim)


_BLOCK = re.compile(r"^(?P<prefix>.*?)(?P<idx>\d+)\.(?P<role>.+)$")


def layer_tables(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The modules a stage changed that sit inside numbered blocks (``model.layers.3.mlp.up_proj``),
    from the typed record's ``modules``."""
    mods = record.get("modules") if isinstance(record, dict) else None
    return {n: c for n, c in (mods or {}).items() if isinstance(c, dict) and _BLOCK.match(n)}


def per_layer(record: dict[str, Any]) -> tuple[str, dict[str, float]] | None:
    """The per-layer quantity worth a heat map: stored bits per weight when a stage changed
    them, else the share of zeros it left; None when it changed neither (or nothing per layer)."""
    changed = layer_tables(record)
    for quantity, key, moved in (
        ("bits", "bits_after", lambda c: c.get("bits_after") != c.get("bits_before")),
        ("sparsity", "sparsity_after", lambda c: bool(c.get("sparsity_after"))),
    ):
        vals = {
            n: float(c[key])
            for n, c in changed.items()
            if isinstance(c.get(key), (int, float)) and moved(c)
        }
        if vals:
            return quantity, vals
    return None


def heatmap(record: Any, title: str) -> str | None:
    """Blocks down, roles across: the per-layer bits or sparsity a stage chose."""
    hit = per_layer(record)
    if hit is None:
        return None
    quantity, vals = hit
    cells: dict[tuple[int, str], float] = {}
    for name, v in vals.items():
        m = _BLOCK.match(name)
        if m:
            cells[(int(m["idx"]), m["role"])] = v
    blocks = sorted({b for b, _ in cells})
    roles = sorted({r for _, r in cells})
    import numpy as np

    grid = np.full((len(blocks), len(roles)), np.nan)
    for (b, r), v in cells.items():
        grid[blocks.index(b), roles.index(r)] = v
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(roles), 1.2 + 0.28 * len(blocks)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(
        range(len(roles)), [r.split(".")[-1] for r in roles], rotation=45, ha="right", fontsize=8
    )
    ax.set_yticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
    ax.set_ylabel("block")
    ax.set_title(f"{title}: {quantity} per layer", fontsize=9)
    fig.colorbar(im, ax=ax, label=quantity)
    return _png(fig)


def suite_figures(state: dict[str, Any], root: Path | None) -> list[tuple[str, str]]:
    """``(name, base64 PNG)`` of each figure the run's evaluation suite wrote (the reliability
    diagram), read from the run dir ``root``; a figure that is gone is left out."""
    if root is None:
        return []
    out = []
    for rel in (state.get("suite") or {}).get("figures") or []:
        f = Path(root) / rel
        if f.suffix == ".png" and f.is_file():
            out.append((f.stem, base64.b64encode(f.read_bytes()).decode()))
    return out
