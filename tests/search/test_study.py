"""A search recipe end to end on the tiny model: trials are recipe runs, registered as
candidates; infeasible sizes are pruned before running; targets decide the best trial."""

import json

import pytest
from typer.testing import CliRunner

from conftest import search_recipe
from slimline.cli import app
from slimline.errors import ConfigError, TargetError
from slimline.models import load_model
from slimline.recipe import parse_recipe
from slimline.registry import Registry
from slimline.search import estimate, model_shape, run_search

STAGES = [{"quant.rtn": {"bits": 4, "group_size": 32}}]
SPACE = {"0.bits": [4, 8], "0.group_size": [16, 32]}
OBJ = {"ppl/python-docs": "minimize", "size/bytes": "minimize"}


def _estimates(tiny_dir, points):
    shape = model_shape(load_model(str(tiny_dir)))
    out = {}
    for bits, g in points:
        rec = parse_recipe(
            search_recipe(tiny_dir, [{"quant.rtn": {"bits": bits, "group_size": g}}], None)
        )
        out[bits, g] = estimate(shape, rec.stages).bytes / 1e6
    return out


def test_a_search_runs_registers_candidates_and_prunes_sizes_it_cannot_meet(
    tiny_dir, tmp_path, home
):
    est = _estimates(tiny_dir, [(4, 16), (4, 32), (8, 16), (8, 32)])
    limit = (
        max(est[4, 16], est[4, 32]) + min(est[8, 16], est[8, 32])
    ) / 2  # every 8-bit point over
    rec = parse_recipe(
        search_recipe(
            tiny_dir,
            STAGES,
            {"space": SPACE, "objectives": OBJ, "budget": {"trials": 6}},
            targets={"max_size_mb": limit, "max_quality_loss": {"ppl/python-docs": 1.5}},
        )
    )
    res = run_search(rec, tmp_path / "s")
    pruned = {p["trial"]: p for p in res.pruned}
    assert pruned, "no 8-bit point was drawn in 6 trials"
    for n, p in pruned.items():
        assert p["params"]["0.bits"] == 8 and "not run" in p["reason"]
        assert not (tmp_path / "s" / "trials" / f"{n:04d}").exists()  # never started
    ran = [t for t in res.trials if t.same_as is None]
    assert ran and all(t.params["0.bits"] == 4 for t in res.trials)
    assert len(res.trials) + len(res.pruned) == 6
    # every run trial is a registered candidate whose manifest names the study and the trial
    reg = Registry(home)
    cands = reg.list(f"{rec.name}-candidate")
    assert len(cands) == len(ran)
    man = json.loads(
        (
            tmp_path / "s" / "trials" / f"{ran[0].number:04d}" / "artifact" / "slimline.json"
        ).read_text()
    )
    assert man["search"] == {
        "status": "candidate",
        "study": res.study,
        "trial": ran[0].number,
        "recipe": rec.name,
    }
    assert reg.get(ran[0].registered).parent == reg.get(f"{rec.name}-baseline").digest
    # the best trial meets every target and is best on the first objective among those that do
    assert res.best is not None and res.best.feasible
    feas = [t for t in res.trials if t.feasible]
    assert res.best.metrics["ppl/python-docs"] == min(t.metrics["ppl/python-docs"] for t in feas)
    assert res.plot.stat().st_size > 5000
    summary = json.loads(res.summary.read_text())
    assert summary["best"] == res.best.number and summary["pruned"]

    # resumed with a larger budget: finished trials are kept, only the new ones run
    more = rec.model_copy(
        update={
            "search": rec.search.model_copy(
                update={"budget": rec.search.budget.model_copy(update={"trials": 7})}
            )
        }
    )
    res2 = run_search(more, tmp_path / "s")
    assert res2.study == res.study and len(res2.trials) + len(res2.pruned) == 7
    first = {t.number: t.metrics for t in res.trials}
    assert {t.number: t.metrics for t in res2.trials if t.number in first} == first


def test_when_no_trial_meets_the_targets_the_nearest_are_reported(tiny_dir, tmp_path, home):
    rec = parse_recipe(
        search_recipe(
            tiny_dir,
            STAGES,
            {"space": {"0.bits": [2, 3]}, "objectives": OBJ, "budget": {"trials": 2}},
            targets={"max_quality_loss": {"agree/top1": "-0.001"}},
        )
    )
    res = run_search(rec, tmp_path / "s", register=False)
    assert res.best is None and res.nearest
    miss = res.nearest[0]["misses"][0]
    assert miss["target"] == "max_quality_loss[agree/top1]" and miss["gap"] > 0
    gaps = [n["misses"][0]["gap"] for n in res.nearest]
    assert gaps == sorted(gaps)


def test_an_unreachable_size_is_refused_before_anything_is_written(tiny_dir, tmp_path, home):
    rec = parse_recipe(
        search_recipe(
            tiny_dir,
            STAGES,
            {"space": SPACE, "objectives": OBJ, "budget": {"trials": 2}},
            targets={"max_size_mb": 1.0},
        )
    )
    with pytest.raises(TargetError, match="smallest artifact this search space can make"):
        run_search(rec, tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert not (home / "registry.db").exists() or not Registry(home).list()


def test_slimline_run_of_a_search_recipe_prints_the_front(tiny_dir, tmp_path, home):
    import yaml

    p = tmp_path / "r.yaml"
    p.write_text(
        yaml.safe_dump(
            search_recipe(
                tiny_dir,
                STAGES,
                {"space": {"0.bits": [4, 8]}, "objectives": OBJ, "budget": {"trials": 2}},
            )
        )
    )
    r = CliRunner().invoke(app, ["run", str(p), "-o", str(tmp_path / "s"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # progress and library lines go to stderr
    assert out["front"] and len(out["trials"]) + len(out["pruned"]) == 2
    r = CliRunner().invoke(app, ["search", "report", out["study"], "--storage", out["storage"]])
    assert r.exit_code == 0 and "front" in r.output
    r = CliRunner().invoke(app, ["search", "worker", "nope", "--storage", out["storage"]])
    assert isinstance(r.exception, ConfigError) and "no study named 'nope'" in r.exception.problem


def test_bad_input_on_the_command_line_exits_non_zero_and_writes_nothing(tiny_dir, tmp_path, home):
    import yaml

    bad = search_recipe(
        tiny_dir, STAGES, {"space": {"0.bits": [4]}, "objectives": OBJ, "budget": {"trials": 0}}
    )
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    r = CliRunner().invoke(app, ["run", str(p), "-o", str(tmp_path / "s")])
    err = r.exception  # main() prints it as "error: ..." and exits with its code
    assert isinstance(err, ConfigError) and err.exit_code == 2
    assert "a budget of 0 runs nothing" in err.problem
    assert not (tmp_path / "s").exists()
    ok = search_recipe(
        tiny_dir, STAGES, {"space": {"0.bits": [4]}, "objectives": OBJ, "budget": {"trials": 1}}
    )
    with pytest.raises(ConfigError, match="cannot open the study storage"):
        run_search(parse_recipe(ok), tmp_path / "s2", storage="nosuchdriver://x/y")
    assert not (tmp_path / "s2").exists()


def test_a_minutes_budget_stops_new_trials(tiny_dir, tmp_path, home):
    rec = parse_recipe(
        search_recipe(
            tiny_dir,
            STAGES,
            {"space": {"0.bits": [4, 8]}, "objectives": OBJ, "budget": {"minutes": 1e-6}},
        )
    )
    res = run_search(rec, tmp_path / "s")
    assert res.trials == [] and res.best is None and res.summary.exists()
