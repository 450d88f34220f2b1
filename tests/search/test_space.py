"""Bad search sections are refused when the recipe is read, with the field and the fix."""

import pytest

from slimline.errors import ConfigError
from slimline.recipe import load_recipe, parse_recipe, shipped_recipes
from slimline.search.space import apply_point, corner_points

STAGES = [{"prune.magnitude": {"sparsity": 0.3}}, {"quant.rtn": {"bits": 4, "group_size": 32}}]
OK = {
    "space": {
        "1.bits": [4, 8],
        "0.sparsity": {"low": 0.1, "high": 0.5},
        "0": {"present": [True, False]},
    },
    "objectives": {"ppl/python-docs": "minimize", "size/bytes": "minimize"},
    "budget": {"trials": 4},
}


def _recipe(search, **over):
    rec = {"name": "s", "model": "m", "stages": STAGES, "search": search, **over}
    return parse_recipe(rec)


def test_a_valid_search_section_parses_and_points_apply():
    r = _recipe(OK)
    assert r.search is not None and r.search.budget.trials == 4
    cfgs = apply_point(r.stage_dicts(), {"1.bits": 8, "0.sparsity": 0.2, "0": True})
    assert [c.kind for c in cfgs] == ["prune.magnitude", "quant.rtn"]
    assert cfgs[0].sparsity == 0.2 and cfgs[1].bits == 8
    assert [c.kind for c in apply_point(r.stage_dicts(), {"0": False})] == ["quant.rtn"]
    # 2 bits x 2 range ends x 2 presences
    assert len(corner_points(r.search.space)) == 8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"1.rank": [4]}}, "quant.rtn) has no parameter 'rank'"),
        ({"space": {"5.bits": [4]}}, "does not name a stage parameter"),
        ({"space": {"0.sparsity": {"low": 0.5, "high": 0.5}}}, "is empty: it needs low < high"),
        ({"space": {"1.bits": []}}, "has no choices"),
        ({"space": {"1.bits": [4, 5]}}, "refuses bits=5"),
        ({"space": {"0": [True]}}, "names stage 0 (prune.magnitude) itself"),
        ({"space": {}}, "the search space is empty"),
        ({"objectives": {"speediness": "minimize"}}, "'speediness' is an unknown metric"),
        ({"objectives": {"ppl/shakespeare": "minimize"}}, "'ppl/shakespeare' is an unknown metric"),
        ({"objectives": {"latency/decode_tok_s": "maximize"}}, "eval.latency is off"),
        ({"objectives": {"size/bytes": "smallest"}}, "direction 'smallest'"),
        ({"budget": {"trials": 0}}, "a budget of 0 runs nothing"),
        ({"budget": {}}, "needs trials or minutes"),
    ],
)
def test_bad_search_sections_are_refused(change, message):
    over = {"eval": {"latency": None}} if "latency" in str(change) else {}
    with pytest.raises(ConfigError) as e:
        _recipe({**OK, **change}, **over)
    assert message in e.value.problem


def test_the_error_names_the_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(
        "name: s\nmodel: m\nstages:\n  - quant.rtn: {bits: 4}\n"
        "search:\n  space: {'0.bits': [4, 8]}\n  objectives: {size/bytes: minimize}\n"
        "  budget: {trials: 0}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_recipe(p, check=False)
    assert str(p) in e.value.problem and "budget" in e.value.problem


def test_the_shipped_search_template_validates():
    names = [n for n in shipped_recipes() if n.startswith("search-")]
    assert names
    for n in names:
        r = load_recipe(n, check=False)
        assert r.search is not None and r.targets.max_size_mb is not None


def test_a_searched_grid_does_not_clash_with_defaults_the_recipe_never_set():
    """The stage says only ``grid``; searching ``grid`` must not carry bits=4/group 128 along,
    also for a worker that reads the recipe back from the study."""
    from slimline.search.space import base_stages, recipe_data

    r = _recipe(
        {
            "space": {"0.grid": ["gguf-q8_0", "gguf-q4_0"]},
            "objectives": {"size/bytes": "minimize"},
            "budget": {"trials": 2},
        },
        stages=[{"quant.rtn": {"grid": "gguf-q4_1"}}],
    )
    again = parse_recipe(recipe_data(r))
    for rec in (r, again):
        (cfg,) = apply_point(base_stages(rec), {"0.grid": "gguf-q8_0"})
        assert cfg.scheme().bits == 8 and cfg.scheme().group_size == 32
