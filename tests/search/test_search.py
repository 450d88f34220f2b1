import itertools

import pytest
import torch

from slimline.errors import ConfigError
from slimline.models import tiny_model
from slimline.search import pareto_front, plot_front, search

STAGES = [{"lowrank.svd": {"targets": ["re:.*mlp.*"]}}]
SPACE = {"0.rank_ratio": {"low": 0.1, "high": 0.9}}
OBJ = {"kl/teacher": "minimize", "params/total": "minimize"}


@pytest.fixture(scope="module")
def base():
    return tiny_model("llama", n_blocks=2, hidden=64).model


def _measure(base_model):
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = torch.log_softmax(base_model(ids).logits, -1)

    def measure(m):
        with torch.no_grad():
            lp = torch.log_softmax(m(ids).logits, -1)
        kl = float((ref.exp() * (ref - lp)).sum(-1).mean())
        return {"kl/teacher": kl, "params/total": float(sum(p.numel() for p in m.parameters()))}

    return measure


def test_search_finds_a_trade_off_front_and_the_best_feasible_point(base, tmp_path):
    measure = _measure(base)
    limit = 0.5 * measure(base)["params/total"] + 0.5 * 3_200_000
    res = search(
        base,
        STAGES,
        SPACE,
        OBJ,
        measure,
        n_trials=12,
        feasible=lambda m: m["params/total"] <= limit,
        seed=0,
    )
    assert len(res.trials) == 12
    # the front is exactly the non-dominated set
    for t in res.front:
        for o in res.trials:
            assert not (
                o.metrics["kl/teacher"] < t.metrics["kl/teacher"]
                and o.metrics["params/total"] < t.metrics["params/total"]
            )
    # more parameters kept -> lower KL along the front (the trade-off is real)
    f = sorted(res.front, key=lambda t: t.metrics["params/total"])
    assert all(a.metrics["kl/teacher"] >= b.metrics["kl/teacher"] for a, b in itertools.pairwise(f))
    assert res.best is not None and res.best.metrics["params/total"] <= limit
    feasible_front = [t for t in res.front if t.metrics["params/total"] <= limit]
    assert res.best.metrics["kl/teacher"] == min(t.metrics["kl/teacher"] for t in feasible_front)
    png = plot_front(res, tmp_path / "front.png", limits={"params/total": limit})
    assert png.stat().st_size > 5000


def test_impossible_targets_give_no_best_point(base):
    res = search(base, STAGES, SPACE, OBJ, _measure(base), n_trials=3, feasible=lambda m: False)
    assert res.best is None and res.front


def test_trials_accumulate_in_shared_storage_across_workers(base, tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    search(base, STAGES, SPACE, OBJ, _measure(base), n_trials=2, storage=url, study_name="s")
    res = search(base, STAGES, SPACE, OBJ, _measure(base), n_trials=2, storage=url, study_name="s")
    assert len(res.trials) == 4


def test_bad_spaces_are_refused(base):
    with pytest.raises(ConfigError, match="does not name a stage"):
        search(base, STAGES, {"3.bits": [4]}, OBJ, _measure(base), n_trials=1)
    with pytest.raises(ConfigError, match="low < high"):
        search(
            base,
            STAGES,
            {"0.rank_ratio": {"low": 0.5, "high": 0.1}},
            OBJ,
            _measure(base),
            n_trials=1,
        )
    with pytest.raises(ConfigError, match="unknown metric"):
        search(base, STAGES, SPACE, {"speediness": "auto"}, _measure(base), n_trials=1)


def test_pareto_front_on_constructed_points():
    from slimline.search import TrialResult

    pts = [
        TrialResult(i, {}, {"ppl/x": p, "size/bytes": s}, True)
        for i, (p, s) in enumerate([(10, 5), (12, 3), (11, 6), (15, 1)])
    ]
    assert [
        t.number for t in pareto_front(pts, {"ppl/x": "minimize", "size/bytes": "minimize"})
    ] == [0, 1, 3]
