"""Reports: self-contained HTML with embedded plots, and a model card with every section."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import pytest

from slimline.errors import InputError
from slimline.report import SECTIONS, model_card, render_html, write_report
from slimline.report.plots import per_layer

SETUP = {
    "engine": "torch",
    "threads": 2,
    "prefill_tokens": 512,
    "prompt_tokens": 32,
    "decode_tokens": 64,
    "repeats": 5,
}


def change(**kw) -> dict:
    """One entry of a typed stage record's ``modules`` (``slimline.core.ModuleChange``)."""
    base = {"type_before": "Linear", "type_after": "QuantLinear", "name_after": None,
            "shape_before": [576, 576], "shape_after": [576, 576], "bits_before": 32.0,
            "bits_after": 32.0, "sparsity_after": None}  # fmt: skip
    return {**base, **kw}


def record(kind: str, modules: dict, **kw) -> dict:
    """A typed stage record (``slimline.core.StageRecord``) as run.json holds it."""
    return {"kind": kind, "config": {"kind": kind}, "modules": modules, "edits": [],
            "params_before": 134_500_000, "params_after": 120_000_000, "bytes_before": 538_000_000,
            "bytes_after": 150_000_000, "details": {}, **kw}  # fmt: skip


def state() -> dict:
    """A run.json as the runner writes it: baseline, a prune stage, a quant stage with per-layer bits."""
    base = {
        "ppl/python-docs": 12.78,
        "kl/teacher": 0.0,
        "agree/top1": 1.0,
        "size/bytes": 538e6,
        "latency/prefill_ms": 1200.0,
        "latency/decode_tok_s": 12.5,
        "memory/peak_mb": 700.0,
        "params/total": 134.5e6,
        "latency/setup": SETUP,
    }
    s1 = {
        **base,
        "ppl/python-docs": 14.1,
        "kl/teacher": 0.08,
        "agree/top1": 0.9,
        "size/bytes": 500e6,
        "latency/prefill_ms": 1100.0,
    }
    s2 = {
        **s1,
        "ppl/python-docs": 15.2,
        "kl/teacher": 0.12,
        "agree/top1": 0.86,
        "size/bytes": 150e6,
        "latency/prefill_ms": 1300.0,
        "memory/peak_mb": 300.0,
    }
    layers = {
        f"model.layers.{b}.{r}": change(bits_after=4 if (b + i) % 3 else 8)
        for b in range(4)
        for i, r in enumerate(("self_attn.q_proj", "mlp.down_proj"))
    }
    return {
        "recipe_digest": "ab" * 32,
        "recipe": {
            "name": "demo",
            "description": "a demo run",
            "model": "smollm2-135m",
            "data": {
                "seed": 0,
                "calibration": {"source": "python-docs", "n": 16, "seq_len": 256},
                "train": None,
            },
            "targets": {
                "max_size_mb": 200,
                "max_prefill_ms": {"value": 1250, "engine": "torch", "threads": 2},
                "max_quality_loss": {"ppl/python-docs": 1.15},
            },
            "eval": {
                "datasets": ["python-docs"],
                "windows": 16,
                "seq_len": 512,
                "every_stage": True,
            },
            "stages": [{"prune.mlp": {"ratio": 0.1}}, {"quant.mixed": {"bits": 4}}],
        },
        "started_at": "2026-11-23T07:00:00+00:00",
        "finished_at": "2026-11-23T07:05:00+00:00",
        "wall_s": 300.0,
        "environment": {
            "platform": "Linux",
            "cpu_count": 2,
            "cpu": "AMD EPYC",
            "torch": "2.13.0",
            "transformers": "5.23",
        },
        "baseline": {
            "metrics": base,
            "digest": "cd" * 32,
            "model": {
                "class": "LlamaForCausalLM",
                "family": "llama",
                "blocks": 30,
                "hidden": 576,
                "params": 134.5e6,
            },
        },
        "stages": [
            {
                "index": 1,
                "kind": "prune.mlp",
                "config": {"kind": "prune.mlp", "ratio": 0.1},
                "record": record(
                    "prune.mlp",
                    {
                        "model.layers.0.mlp.up_proj": change(
                            type_after="Linear", shape_after=[1382, 576]
                        )
                    },
                    edits=[{"op": "remove_mlp_channels", "removed": 154}],
                ),
                "wall_s": 12.0,
                "process_peak_rss_mb": 900.0,
                "metrics": s1,
                "checkpoint": "stages/01-prune.mlp",
            },
            {
                "index": 2,
                "kind": "quant.mixed",
                "config": {"kind": "quant.mixed", "bits": 4, "ignore": ["lm_head"]},
                "record": record("quant.mixed", layers),
                "wall_s": 40.0,
                "process_peak_rss_mb": 1100.0,
                "metrics": s2,
                "checkpoint": "stages/02-quant.mixed",
            },
        ],
        "verdicts": [
            {
                "target": "max_size_mb",
                "metric": "size/bytes",
                "status": "met",
                "limit": 200,
                "value": 150,
                "text": "size/bytes 150 MB <= 200 MB: met",
            },
            {
                "target": "max_prefill_ms",
                "metric": "latency/prefill_ms",
                "status": "missed",
                "limit": 1250,
                "value": 1300,
                "text": "latency/prefill_ms 1300 ms <= 1250 ms: missed",
            },
            {
                "target": "max_quality_loss[ppl/python-docs]",
                "metric": "ppl/python-docs",
                "status": "missed",
                "limit": 14.7,
                "value": 15.2,
                "text": "ppl 15.2: missed",
            },
        ],
        "digest": "ef" * 32,
        "student": {
            "class": "LlamaForCausalLM",
            "family": "llama",
            "blocks": 30,
            "hidden": 576,
            "params": 120e6,
        },
        "registered": {"ref": "demo@1", "parent": "demo-baseline@1", "digest": "ef" * 32},
    }


def pngs(html: str) -> list[bytes]:
    return [
        base64.b64decode(m)
        for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    ]


def test_html_is_self_contained_with_plots_and_heatmap():
    html = render_html(state())
    imgs = pngs(html)
    # quality vs size, quality vs latency, one per-layer heat map (the quant stage)
    assert len(imgs) == 3 and all(i.startswith(b"\x89PNG") and len(i) > 5000 for i in imgs)
    assert "stage 2: quant.mixed" in html and "Per-layer choices" in html
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing external to fetch
    for v in ("met", "missed"):
        assert f'class="{v}"' in html
    assert "demo@1" in html


def test_per_layer_finder_reads_the_typed_record():
    q, vals = per_layer(state()["stages"][1]["record"])
    assert q == "bits" and len(vals) == 8 and set(vals.values()) == {4.0, 8.0}
    # a structural stage (shapes changed, bits and zeros did not): nothing to map
    assert per_layer(state()["stages"][0]["record"]) is None
    # pruning leaves the bits alone and zeros behind: sparsity is mapped
    pruned = {
        f"model.layers.{i}.mlp.up_proj": change(type_after="Linear", sparsity_after=0.1 * (i + 1))
        for i in range(3)
    }
    q, vals = per_layer(record("prune.wanda", pruned))
    assert q == "sparsity" and vals["model.layers.2.mlp.up_proj"] == pytest.approx(0.3)
    # modules outside numbered blocks (the head) are not per-layer cells
    assert per_layer(record("quant.rtn", {"lm_head": change(bits_after=4.0)})) is None


def test_model_card_has_every_section_and_tells_what_got_worse():
    card = model_card(state())
    heads = re.findall(r"^## (.+)$", card, flags=re.M)
    assert heads == list(SECTIONS)
    worse = card.split("What got worse:")[1].split("What got better:")[0]
    assert "ppl/python-docs" in worse and "latency/prefill_ms" in worse and "agree/top1" in worse
    better = card.split("What got better:")[1]
    assert "size/bytes" in better and "memory/peak_mb" in better
    assert "| baseline | `torch` | 2 | 1200 | 12.5 |" in card and "AMD EPYC" in card
    assert "| hidden | 576 | 576 |" in card and "| params | 134,500,000 | 120,000,000 |" in card
    assert "8 modules in blocks 0–3" in card  # where the quant stage was applied
    assert "**missed** — latency/prefill_ms" in card


def test_write_report_from_a_real_tiny_run(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parents[1] / "recipe"))
    import helpers

    from slimline.recipe import parse_recipe, run_recipe

    monkeypatch.setenv("SLIMLINE_HOME", str(tmp_path / "home"))
    model = helpers.save_tiny(tmp_path / "m")
    r = parse_recipe(
        helpers.tiny_recipe(model, [{"test.rtn": {"bits": 4}}], targets={"max_size_mb": 50})
    )
    res = run_recipe(r, tmp_path / "run")
    assert res.report == tmp_path / "run" / "report.html" and res.card.exists()
    html = res.report.read_text()
    assert len(pngs(html)) == 3  # size plot, latency plot, test.rtn's per-layer bits
    card = res.card.read_text()
    assert re.findall(r"^## (.+)$", card, flags=re.M) == list(SECTIONS)
    assert "timed interleaved with the baseline" in card  # the baseline's fair re-timing
    assert "read bandwidth" in card  # the bound decode is judged against
    # re-rendering from run.json alone gives the same card
    state_file = json.loads((tmp_path / "run" / "run.json").read_text())
    assert model_card(state_file) == res.card.read_text()
    write_report(tmp_path / "run")
    with pytest.raises(InputError, match=r"run\.json"):
        write_report(tmp_path)
