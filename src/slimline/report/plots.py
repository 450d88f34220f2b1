"""Report plots as base64 PNG (embedded in one self-contained HTML file): quality vs size and
quality vs latency for the baseline and every stage, with the targets as limit lines, and a
per-layer heat map (bits or sparsity) for each stage whose record lists layers."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from slimline.recipe.schema import parse_quality_limit


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
    spec = (state["recipe"].get("targets") or {}).get("max_quality_loss", {}).get(metric)
    base = state["baseline"]["metrics"].get(metric)
    if spec is None or base is None:
        return None
    mode, amount = parse_quality_limit(metric, spec)
    return base * amount if mode == "ratio" else base + amount


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
_LAYER_KEYS = ("bits", "sparsity", "density", "w_bits", "error", "mse")


def layer_tables(record: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every per-layer table in a stage record, as ``(key, {module_name: value})``: either a
    mapping keyed by module names, or a list of dicts that carry a ``name`` field."""
    out: list[tuple[str, dict[str, Any]]] = []

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            named = {k: v for k, v in node.items() if isinstance(k, str) and _BLOCK.match(k)}
            if named and len(named) >= max(1, len(node) // 2):
                out.append((key, named))
                return
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, list):
            rows = {
                v["name"]: v
                for v in node
                if isinstance(v, dict)
                and isinstance(v.get("name"), str)
                and _BLOCK.match(v["name"])
            }
            if rows:
                out.append((key, rows))
                return
            for v in node:
                walk(v, key)

    walk(record)
    return out


def per_layer(record: Any) -> tuple[str, dict[str, float]] | None:
    """The per-layer quantity worth a heat map: bits or sparsity first, else the layer error."""
    tables = layer_tables(record)
    for q in _LAYER_KEYS:
        for key, named in tables:
            vals = {
                k: float(v[q])
                for k, v in named.items()
                if isinstance(v, dict) and isinstance(v.get(q), (int, float))
            }
            if vals:
                return q, vals
            if q in key:
                vals = {k: float(v) for k, v in named.items() if isinstance(v, (int, float))}
                if vals:
                    return q, vals
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
    from matplotlib.colors import LogNorm

    positive = bool(np.nanmin(grid) > 0) and quantity in ("error", "mse")
    norm = LogNorm() if positive and np.nanmax(grid) / np.nanmin(grid) > 100 else None
    im = ax.imshow(grid, aspect="auto", cmap="viridis", norm=norm)
    ax.set_xticks(
        range(len(roles)), [r.split(".")[-1] for r in roles], rotation=45, ha="right", fontsize=8
    )
    ax.set_yticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
    ax.set_ylabel("block")
    ax.set_title(f"{title}: {quantity} per layer", fontsize=9)
    fig.colorbar(im, ax=ax, label=quantity)
    return _png(fig)
