"""The technique contract the runner relies on: every stage returns the same typed record, found
by comparing the model before and after; each config declares what it needs and no technique
loads data itself; the report reads the record and never imports the recipe package."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest

from slimline.core import Context, StageRecord, apply_technique, make_config
from slimline.errors import ConfigError, DataError
from slimline.models import tiny_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", n_blocks=3, hidden=64, seed=0)


def test_a_quantizer_record_lists_every_replaced_layer_with_its_stored_bits(tiny):
    m = copy.deepcopy(tiny.model)
    rec = apply_technique(m, make_config("quant.rtn", {"bits": 4, "group_size": 32}))
    assert isinstance(rec, StageRecord) and rec.kind == "quant.rtn"
    assert len(rec.modules) == 21  # 7 linears x 3 blocks, lm_head ignored
    q = rec.modules["model.layers.1.mlp.up_proj"]
    assert (q.type_before, q.type_after, q.shape_before, q.shape_after) == (
        "Linear", "QuantLinear", [128, 64], [128, 64],
    )  # fmt: skip
    # 4-bit codes + one fp32 scale per 32 weights = 5 bits per weight, from the module itself
    assert (q.bits_before, q.bits_after) == (32.0, 5.0)
    assert rec.params_after == rec.params_before and rec.bytes_after < rec.bytes_before
    assert rec["scheme"] == rec.details["scheme"]  # reads like the technique's own dict
    assert StageRecord.model_validate_json(rec.model_dump_json()) == rec  # JSON round trip


def test_structural_edits_and_removed_blocks_are_recorded_by_identity(tiny):
    m = copy.deepcopy(tiny.model)
    rec = apply_technique(m, make_config("prune.blocks", {"blocks": [1]}), Context())
    assert rec.edits == [{"op": "remove_blocks", "blocks": [1]}]
    removed = {n for n, c in rec.modules.items() if c.type_after is None}
    assert removed == {n for n in rec.modules if n.startswith("model.layers.1.")}
    weights = sum(c.shape_before[0] * c.shape_before[1] for c in rec.modules.values())
    assert len(removed) == 7 and rec.params_before - rec.params_after == weights + 2 * 64  # + norms
    # block 2 moved up to index 1 unchanged: not a change
    assert not any(n.startswith("model.layers.2.") for n in rec.modules)


def test_pruning_records_the_zeros_it_left(tiny):
    m = copy.deepcopy(tiny.model)
    rec = apply_technique(m, make_config("prune.magnitude", {"sparsity": 0.5}))
    c = rec.modules["model.layers.0.self_attn.q_proj"]
    assert c.type_after == "Linear" and c.sparsity_after == pytest.approx(0.5)
    assert c.bits_after == 32.0  # the mask is a transient buffer, never stored


@pytest.mark.parametrize(
    ("kind", "params", "needs"),
    [
        ("quant.rtn", {}, set()),
        ("quant.gptq", {}, {"calib"}),
        ("quant.w8a8", {"smooth_alpha": None}, set()),
        ("quant.w8a8", {}, {"calib"}),
        ("prune.magnitude", {}, set()),
        ("prune.wanda", {}, {"calib"}),
        ("prune.heads", {"importance": "magnitude"}, set()),
        ("prune.heads", {}, {"calib"}),
        ("prune.blocks", {"blocks": [0]}, set()),
        ("prune.blocks", {}, {"calib"}),
        ("distill.student", {"keep": 2, "importance": "even"}, set()),
        ("distill.student", {"keep": 2}, {"calib"}),
        ("distill", {}, {"train", "teacher"}),
    ],
)
def test_each_config_declares_what_it_needs(kind, params, needs):
    assert make_config(kind, params).requires() == needs


@pytest.mark.parametrize(
    ("kind", "params", "error"),
    [
        ("prune.wanda", {}, DataError),
        ("prune.blocks", {}, ConfigError),
        ("prune.mlp", {}, ConfigError),
        ("distill", {"max_steps": 1}, ConfigError),
    ],
)
def test_a_technique_never_loads_data_itself(tiny, kind, params, error):
    # a tokenizer alone used to make techniques fetch python-docs on their own
    m = copy.deepcopy(tiny.model)
    with pytest.raises(error):
        apply_technique(m, make_config(kind, params), Context(tokenizer=tiny.tokenizer))


def test_the_runner_supplies_only_what_the_stages_declare(tiny, tmp_path):
    from slimline.recipe import parse_recipe
    from slimline.recipe.runner import _Run

    def supplied(stages):
        r = parse_recipe({"name": "x", "model": "m", "stages": stages,
                          "data": {"calibration": {"n": 2, "seq_len": 32}}})  # fmt: skip
        run = _Run(r, tmp_path / "run", threads=None)
        run.supplies(tiny)
        return run

    run = supplied([{"quant.rtn": {}}])
    assert run.calib is None and run.train == {} and set(run.teachers) == {"base"}
    run = supplied([{"prune.wanda": {}}, {"distill": {"seq_len": 32}}])
    assert run.calib.shape == (2, 32) and list(run.train) == [("python-docs", 32)]
    assert not (tmp_path / "run").exists()  # supplies() loads; it writes nothing


def test_the_report_never_imports_the_recipe_package():
    root = Path(__file__).parents[2] / "src" / "slimline" / "report"
    imported = set()
    for f in root.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
    assert imported and not {m for m in imported if m.startswith("slimline.recipe")}
