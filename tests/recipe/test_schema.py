"""Recipe validation: errors name the file, the line and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slimline.errors import ConfigError, ModelLoadError, TargetError
from slimline.recipe import load_recipe, parse_recipe, shipped_recipes
from slimline.recipe.schema import model_params, size_lower_bound_mb


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_valid_recipe_builds_registered_configs(tiny_dir, tmp_path):
    p = write(
        tmp_path,
        f"name: ok\nmodel: {tiny_dir}\nstages:\n  - test.rtn: {{bits: 4}}\n  - test.rtn\n",
    )
    r = load_recipe(p)
    assert [s.kind for s in r.stages] == ["test.rtn", "test.rtn"]
    assert r.stages[0].bits == 4 and r.stages[1].bits == 8  # the second uses the default
    # the YAML form round-trips, and the digest depends on content only
    again = parse_recipe(yaml.safe_load(yaml.safe_dump(r.to_dict())))
    assert again.digest() == r.digest()
    assert (
        parse_recipe({**r.to_dict(), "stages": [{"test.rtn": {"bits": 3}}]}).digest() != r.digest()
    )


def test_unknown_stage_kind_names_line_and_registered_kinds(tiny_dir, tmp_path):
    p = write(
        tmp_path,
        f"name: x\nmodel: {tiny_dir}\nstages:\n  - test.rtn: {{}}\n  - quant.nope: {{bits: 4}}\n",
    )
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert f"{p}:5" in e.value.problem and "quant.nope" in e.value.problem
    assert "test.rtn" in e.value.fix  # the registered kinds are listed


def test_bad_stage_parameter_names_line(tiny_dir, tmp_path):
    p = write(tmp_path, f"name: x\nmodel: {tiny_dir}\nstages:\n  - test.rtn: {{bitz: 4}}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert f"{p}:4" in e.value.problem and "bitz" in e.value.problem


def test_unknown_field_lists_allowed_fields(tiny_dir, tmp_path):
    p = write(tmp_path, f"name: x\nmodel: {tiny_dir}\ntargets:\n  max_size_gb: 1\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert f"{p}:4" in e.value.problem and "targets.max_size_gb" in e.value.problem
    assert "max_size_mb" in e.value.fix and "max_quality_loss" in e.value.fix


def test_bad_values_are_refused(tiny_dir, tmp_path):
    cases = {
        "targets:\n  max_size_mb: -3\n": "max_size_mb",
        "targets:\n  max_quality_loss: {ppl/python-docs: 0.9}\n": "beat the baseline",
        "targets:\n  max_quality_loss: {speed: 1.1}\n": "unknown metric",
        "targets:\n  max_quality_loss: {ppl/python-docs: lots}\n": "neither a ratio",
        "eval:\n  metrics: [ppl, bleu]\n": "bleu",
        "stages: {test.rtn: {}}\n": "stages",
        "stages:\n  - {test.rtn: {}, quant.x: {}}\n": "one `kind",
    }
    for body, needle in cases.items():
        p = write(tmp_path, f"name: x\nmodel: {tiny_dir}\n{body}")
        with pytest.raises(ConfigError) as e:
            load_recipe(p)
        assert needle in e.value.problem, (body, e.value.problem)
        assert str(p) in e.value.problem


def test_missing_name_and_bad_yaml(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="missing field 'name'"):
        load_recipe(write(tmp_path, f"model: {tiny_dir}\n"))
    with pytest.raises(ConfigError, match=r"r\.yaml:\d+: not valid YAML"):
        load_recipe(write(tmp_path, "name: x\nmodel: [unclosed\n"))


def test_model_that_does_not_load(tmp_path):
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    p = write(tmp_path, f"name: x\nmodel: {bad}\n")
    with pytest.raises(ModelLoadError) as e:
        load_recipe(p)
    assert f"{p}:2" in e.value.problem and "does not load" in e.value.problem
    with pytest.raises(ModelLoadError, match="not found"):
        load_recipe(write(tmp_path, "name: x\nmodel: /no/such/model\n", "other.yaml"))
    # without the model checks the same file validates (fields only)
    assert load_recipe(p, check=False).model == str(bad)


def test_contradictory_targets(tiny_dir, tmp_path):
    # tiny llama: 3,219,776 params, 73,728 in the blocks' Linear layers; the rest (mostly the
    # tied 49152 x 64 embedding) stays at >= 16 bits: even 2-bit blocks need >= 6.31 MB.
    p = write(
        tmp_path,
        f"name: x\nmodel: {tiny_dir}\ntargets:\n  max_size_mb: 2\nstages:\n  - test.rtn: {{bits: 2}}\n",
    )
    with pytest.raises(TargetError) as e:
        load_recipe(p)
    assert f"{p}:4" in e.value.problem and "smallest size" in e.value.problem
    params = model_params(str(tiny_dir))
    assert params == {"total": 3_219_776, "block_linear": 73_728}  # the tied head counted once
    bound = size_lower_bound_mb(load_recipe(p, check=False), params)
    assert 6.30 < bound < 6.32  # measured 6.311 MB
    # 4-bit + 2:4 sparsity: half the block weights may be free -> the same 6.31 MB bound;
    # a stage that removes parameters by an amount its config cannot bound -> no bound at all
    mk = lambda stages: parse_recipe({"name": "x", "model": str(tiny_dir), "stages": stages})  # noqa: E731
    sparse = mk([{"test.rtn": {"bits": 4}}, {"prune.magnitude": {"pattern": "2:4"}}])
    assert size_lower_bound_mb(sparse, params) == pytest.approx(bound)
    assert size_lower_bound_mb(mk([{"prune.heads": {}}, {"test.rtn": {"bits": 2}}]), params) is None
    # Both latency kinds together are fine on the engine and threads eval.latency measures with;
    # a limit on another engine or thread count could only ever be "not measured": refused.
    ok = write(
        tmp_path,
        f"name: x\nmodel: {tiny_dir}\ntargets:\n  max_size_mb: 20\n"
        "  max_prefill_ms: {value: 100, engine: torch, threads: 4}\n"
        "  min_decode_tok_s: 5\nstages:\n  - test.rtn: {bits: 2}\n"
        "eval: {latency: {threads: 4}}\n",
        "ok.yaml",
    )
    with pytest.raises(ConfigError) as e:
        load_recipe(ok)
    assert "min_decode_tok_s holds on torch with 2 threads" in e.value.problem
    r = load_recipe(
        write(
            tmp_path,
            ok.read_text().replace(
                "min_decode_tok_s: 5", "min_decode_tok_s: {value: 5, threads: 4}"
            ),
            "ok2.yaml",
        )
    )
    assert r.targets.min_decode_tok_s.engine == "torch" and r.targets.max_prefill_ms.threads == 4
    other = ok.read_text().replace("engine: torch, threads: 4}", "engine: onnxruntime, threads: 4}")
    with pytest.raises(ConfigError, match="max_prefill_ms holds on onnxruntime"):
        load_recipe(write(tmp_path, other, "other.yaml"))
    # memory below what the weights need, with no stage: refused too
    with pytest.raises(TargetError, match="max_memory_mb"):
        load_recipe(
            write(tmp_path, f"name: x\nmodel: {tiny_dir}\ntargets:\n  max_memory_mb: 1\n", "m.yaml")
        )


def test_unknown_recipe_name_lists_templates():
    with pytest.raises(ConfigError) as e:
        load_recipe("no-such-template")
    assert "default" in e.value.fix


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_validates(name):
    """Every template parses, its stage kinds are registered, and its targets are reachable."""
    r = load_recipe(name)
    assert r.name == name and r.stages and r.model == "smollm2-135m"
    assert r.targets.model_dump(exclude_none=True)


def test_shipped_templates_exist():
    assert {"default", "int4-memory", "sparse24-int8-speed", "distill-prune-quant-3x"} <= set(
        shipped_recipes()
    )
