"""The model card (markdown): what a reviewer needs to trust a compressed model — teacher and
student architectures, data and filtering, objectives, which method was applied where,
evaluations, the hardware and engine of every latency, the trade-offs (what got worse), and
the target verdicts. Built from a run dir's ``run.json`` only."""

from __future__ import annotations

from typing import Any

from slimline.metrics import direction

SECTIONS = (
    "Summary",
    "Teacher and student architectures",
    "Data and filtering",
    "Objectives",
    "Where each method was applied",
    "Evaluations",
    "Evaluation suite",
    "Hardware and engine of every latency",
    "Trade-offs",
    "Targets",
    "Reproduce",
)


def fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "—" if v is None else str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e6:
            return f"{v:,.0f}"
        return f"{v:.4g}"
    return str(v)


def scalar_metrics(m: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _direction(metric: str) -> bool | None:
    d = direction(metric)
    return None if d is None else d == "higher"


def trade_offs(base: dict[str, Any], final: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Lines for what got better and what got worse, final against baseline."""
    better, worse = [], []
    for k, b in scalar_metrics(base).items():
        f = final.get(k)
        if not isinstance(f, (int, float)) or k.startswith("params/"):
            continue
        d = _direction(k)
        if d is None or f == b:
            continue
        ratio = f / b if b else float("inf")
        line = f"`{k}`: {fmt(b)} → {fmt(f)} ({ratio:.3g}×)"
        (better if (f > b) == d else worse).append(line)
    return better, worse


def _layers(record: dict[str, Any]) -> list[str]:
    from slimline.report.plots import layer_tables

    return sorted(layer_tables(record))


def _summarise_layers(names: list[str]) -> str:
    if not names:
        return "no module inside the blocks changed"
    roles: dict[str, int] = {}
    from slimline.report.plots import _BLOCK

    blocks = set()
    for n in names:
        m = _BLOCK.match(n)
        if m:
            roles[m["role"]] = roles.get(m["role"], 0) + 1
            blocks.add(int(m["idx"]))
    role_txt = ", ".join(f"{r} ×{c}" for r, c in sorted(roles.items()))
    return (
        f"{len(names)} modules in blocks {min(blocks)}–{max(blocks)}: {role_txt}"
        if blocks
        else f"{len(names)} modules"
    )


def _arch_rows(t: dict[str, Any], s: dict[str, Any] | None) -> list[str]:
    keys = (
        "class",
        "family",
        "blocks",
        "hidden",
        "intermediate",
        "heads",
        "kv_heads",
        "vocab",
        "params",
    )
    rows = ["| | teacher (baseline) | student (artifact) |", "|---|---|---|"]
    for k in keys:
        rows.append(f"| {k} | {fmt(t.get(k))} | {fmt((s or {}).get(k))} |")
    return rows


def _technique_summary(kind: str) -> str:
    from slimline.core import techniques

    tech = techniques().get(kind)
    return tech.summary if tech and tech.summary else "(technique not registered in this process)"


def model_card(state: dict[str, Any]) -> str:
    """Markdown model card for the run described by ``state`` (the run dir's ``run.json``)."""
    r = state["recipe"]
    base = state["baseline"]["metrics"]
    stages = state["stages"]
    final = stages[-1]["metrics"] if stages else base
    out: list[str] = [f"# Model card: {r['name']}", ""]
    if r.get("description"):
        out += [r["description"], ""]

    out += ["## Summary", ""]
    verdicts = state.get("verdicts") or []
    met = sum(v["status"] == "met" for v in verdicts)
    out += [
        f"- Source model: `{r['model']}`; {len(stages)} stage(s): "
        + (", ".join(f"`{s['kind']}`" for s in stages) or "none"),
        f"- Artifact digest: `{state.get('digest', '—')}`; parent (baseline) `{state['baseline'].get('digest', '—')}`",
        f"- Targets met: {met} of {len(verdicts)}",
    ]
    if state.get("registered"):
        out.append(
            f"- Registered as `{state['registered']['ref']}` (parent `{state['registered']['parent']}`)"
        )
    out.append("")

    out += ["## Teacher and student architectures", ""]
    out += _arch_rows(state["baseline"].get("model") or {}, state.get("student"))
    out += [
        "",
        "The teacher is the unmodified source model; it is also the reference for `kl/teacher` and `agree/top1`.",
        "",
    ]

    d = r.get("data") or {}
    cal = d.get("calibration") or {}
    out += ["## Data and filtering", ""]
    out.append(
        f"- Calibration: {cal.get('n')} windows of {cal.get('seq_len')} tokens from `{cal.get('source')}` "
        f"at random offsets (seed {d.get('seed')}), drawn from the first half of the text only."
    )
    if d.get("train"):
        t = d["train"]
        out.append(
            f"- Training: up to {t.get('n')} blocks of {t.get('seq_len')} tokens from `{t.get('source')}`, "
            "first half of the text, excluding every block a calibration window touches."
        )
    ev = r.get("eval") or {}
    out.append(
        f"- Evaluation: the first {ev.get('windows')} non-overlapping windows of {ev.get('seq_len')} tokens of "
        f"the second half of {', '.join(f'`{x}`' for x in ev.get('datasets', []))} — never seen in calibration or training."
    )
    for s in stages:
        rec = s.get("record") or {}
        filt = {k: v for k, v in rec.items() if "filter" in k or "data" in k}
        if filt:
            out.append(f"- Stage {s['index']} (`{s['kind']}`) data/filtering record: `{filt}`")
    out.append("")

    out += ["## Objectives", ""]
    if not stages:
        out.append("No stage ran: the artifact is the baseline.")
    for s in stages:
        cfg = {k: v for k, v in (s.get("config") or {}).items() if k not in ("kind", "version")}
        obj = {
            k: v
            for k, v in (s.get("record") or {}).items()
            if any(w in k for w in ("loss", "objective"))
        }
        line = f"- Stage {s['index']} `{s['kind']}` — {_technique_summary(s['kind'])}. Parameters: `{cfg}`"
        if obj:
            line += f"; objective record: `{obj}`"
        out.append(line)
    out.append("")

    out += ["## Where each method was applied", ""]
    for s in stages:
        cfg = s.get("config") or {}
        sel = f"targets {cfg.get('targets') or 'all Linear layers in the blocks'}, ignore {cfg.get('ignore') or []}"
        out.append(
            f"- Stage {s['index']} `{s['kind']}` ({sel}): {_summarise_layers(_layers(s.get('record') or {}))}"
        )
    if not stages:
        out.append("- nowhere")
    out.append("")

    out += ["## Evaluations", ""]
    cols = ["baseline", *[f"{s['index']}: {s['kind']}" for s in stages]]
    keys = [k for k in scalar_metrics(base) if not k.endswith("_range")]
    for s in stages:
        keys += [k for k in scalar_metrics(s["metrics"]) if k not in keys]
    out.append("| metric | " + " | ".join(cols) + " | final / baseline |")
    out.append("|---" * (len(cols) + 2) + "|")
    for k in keys:
        vals = [base.get(k)] + [s["metrics"].get(k) for s in stages]
        f, b = final.get(k), base.get(k)
        ratio = (
            f"{f / b:.3f}"
            if isinstance(f, (int, float)) and isinstance(b, (int, float)) and b
            else "—"
        )
        out.append(f"| `{k}` | " + " | ".join(fmt(v) for v in vals) + f" | {ratio} |")
    out.append("")
    if not ev.get("every_stage", True):
        out += [
            "Quality was measured on the baseline and the final model only (`every_stage: false`).",
            "",
        ]

    out += ["## Evaluation suite", ""]
    out += suite_section(state)
    out.append("")

    out += ["## Hardware and engine of every latency", ""]
    out += engines_section(state)
    out.append("")

    out += ["## Trade-offs", ""]
    better, worse = trade_offs(base, final)
    out.append("What got worse:" if worse else "Nothing measured got worse.")
    out += [f"- {w}" for w in worse]
    out.append("")
    out.append("What got better:" if better else "Nothing measured got better.")
    out += [f"- {b}" for b in better]
    out.append("")

    out += ["## Targets", ""]
    if not verdicts:
        out.append("No targets declared.")
    for v in verdicts:
        out.append(f"- **{v['status']}** — {v['text']}")
    out.append("")

    out += [
        "## Reproduce",
        "",
        "```",
        "slimline run RUN_DIR/recipe.yaml -o NEW_RUN_DIR   # recipe.yaml is saved in every run dir",
        "```",
        "",
    ]
    return "\n".join(out)


def _timed(m: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(tag, setup)`` of each engine a metrics dict was timed on: ``""`` for the primary one,
    ``"@torch"`` for another (the runner's names)."""
    return [
        (k.removeprefix("latency/setup"), v)
        for k, v in m.items()
        if (k == "latency/setup" or k.startswith("latency/setup@")) and isinstance(v, dict)
    ]


def engines_section(state: dict[str, Any]) -> list[str]:
    """Every latency with its engine, version and threads, beside the decode speed this machine's
    memory bandwidth allows (bytes each token reads / read bandwidth), then the engine files the
    run exported, verified in their engine, with the quality measured there."""
    base = state["baseline"]["metrics"]
    stages = state["stages"]
    rows = [("baseline", base), *[(f"{s['index']}: `{s['kind']}`", s["metrics"]) for s in stages]]
    out = [
        "| model | engine | threads | prefill ms | decode tok/s | bound tok/s | of bound | "
        "MB read / token |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for name, m in rows:
        timed = _timed(m)
        if not timed:
            out.append(f"| {name} | not measured | | | | | | |")
        for tag, setup in timed:
            engine = f"`{setup.get('engine_name') or setup['engine']}`"
            if setup.get("engine_version"):
                engine += f" {setup['engine_version']}"
            bpt = m.get("latency/bytes_per_token" + tag)
            out.append(
                f"| {name} | {engine} | {setup['threads']} | {fmt(m.get('latency/prefill_ms' + tag))}"
                f" | {fmt(m.get('latency/decode_tok_s' + tag))}"
                f" | {fmt(m.get('latency/decode_bound_tok_s' + tag))}"
                f" | {_pct(m.get('latency/decode_of_bound' + tag))}"
                f" | {fmt(bpt / 1e6) if isinstance(bpt, (int, float)) else '—'} |"
            )
            note = (
                f"`{setup['engine']}`: batch 1; prefill of {setup['prefill_tokens']} tokens, "
                f"greedy decode of {setup['decode_tokens']} tokens after {setup['prompt_tokens']}; "
                f"median of {setup['repeats']} after a warm-up"
                + (
                    "; the final model timed interleaved with the baseline (A B A B)"
                    if setup.get("paired_with_baseline")
                    else ""
                )
            )
            if note not in notes:
                notes.append(note)
    out.append("")
    out += [f"- {n}" for n in notes]
    bw = next((m[k] for _, m in rows for k in m if k.startswith("memory/bandwidth_gb_s")), None)
    if bw:
        out.append(
            f"- Bound: at batch 1 each generated token reads every weight once, so decode cannot "
            f"beat (read bandwidth {bw:.1f} GB/s, measured here) / (bytes per token)."
        )
    env = state.get("environment") or {}
    if env:
        out.append(
            f"- Machine: {env.get('platform')}, {env.get('cpu_count')} logical CPUs "
            f"({env.get('cpu', 'CPU')}); torch {env.get('torch')}, transformers "
            f"{env.get('transformers')}. Shared machines are noisy: compare latencies as ratios "
            "measured in one run."
        )
    exports = list((state.get("exports") or {}).values())
    if exports:
        out += [
            "",
            "Engine files exported from the final artifact, each verified in its engine (logits "
            "against torch holding the same weights) and registered as the artifact's child:",
            "",
            "| file | engine | MB | tensor types | verified: KL / top-1 | quality in the engine "
            "| baseline there | registry |",
            "|---|---|---|---|---|---|---|---|",
        ]
        reg = (state.get("registered") or {}).get("exports") or {}
        for e in exports:
            v = e.get("verify") or {}
            eng = e.get("engine") or {}
            q, b = e.get("metrics") or {}, e.get("baseline_metrics") or {}
            ppl = [k for k in q if k.startswith("ppl/") and not k.endswith("/vs_baseline")]
            types = ", ".join(f"{n} {t}" for t, n in sorted((e.get("type_counts") or {}).items()))
            out.append(
                f"| `{e['path']}/{e['file']}` | `{eng.get('engine', '?')}` {eng.get('version', '')}"
                f" | {e['bytes'] / 1e6:.1f} | {types}"
                f" | {'yes' if v.get('verified') else 'NO'}: {fmt(v.get('kl'))} / "
                f"{fmt(v.get('agree/top1'))}"
                f" | {'; '.join(f'{k} {fmt(q[k])}' for k in ppl) or '—'}"
                f"{'; KL ' + fmt(q['kl/teacher']) if 'kl/teacher' in q else ''}"
                f" | {'; '.join(f'{k} {fmt(b[k])}' for k in ppl if k in b) or '—'}"
                f" | {'`' + reg[e['format']]['ref'] + '`' if e['format'] in reg else '—'} |"
            )
    return out


def _pct(v: Any) -> str:
    return f"{100 * v:.0f} %" if isinstance(v, (int, float)) else "—"


def suite_section(state: dict[str, Any]) -> list[str]:
    """The recipe's evaluation suite (``eval.suite``) on the final model: every gate's verdict
    (metric, value, limit, passed), what could not be judged, and its figures."""
    s = state.get("suite")
    if not s:
        return ["No evaluation suite ran (a recipe names one with `eval.suite`, e.g. `default`)."]
    verdicts = s.get("verdicts") or []
    failed = [v for v in verdicts if not v["passed"]]
    out = [
        f"Suite `{s['suite']}` on the final model against the baseline, once after the last "
        f"stage ({fmt(s.get('wall_s'))} s): {len(verdicts) - len(failed)} of {len(verdicts)} "
        f"gates passed"
        + ("; failed: " + ", ".join(f"`{v['metric']}`" for v in failed) + "." if failed else "."),
        "",
        "| metric | value | baseline | limit | gate | passed |",
        "|---|---|---|---|---|---|",
    ]
    ref = s.get("reference") or {}
    for v in verdicts:
        gate = v["gate"] + (" (recipe)" if v.get("extra") else "")
        out.append(
            f"| `{v['metric']}` | {fmt(v['value'])} | {fmt(ref.get(v['metric']))} | "
            f"{fmt(v['limit'])} | `{gate}` | {'yes' if v['passed'] else '**no**'} |"
        )
    out += [f"- not judged: {x}" for x in s.get("skipped") or []]
    out += [f"- figure: `{f}`" for f in s.get("figures") or []]
    return out
