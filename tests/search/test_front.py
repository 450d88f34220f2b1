"""The Pareto front is exactly the non-dominated set."""

import random

from slimline.search import TrialResult, front_layers, pareto_front

OBJ = {"ppl/x": "minimize", "size/bytes": "minimize", "latency/decode_tok_s": "maximize"}


def _dominates(a, b):
    ge = (
        a.metrics["ppl/x"] <= b.metrics["ppl/x"]
        and a.metrics["size/bytes"] <= b.metrics["size/bytes"]
        and a.metrics["latency/decode_tok_s"] >= b.metrics["latency/decode_tok_s"]
    )
    return ge and a.metrics != b.metrics


def test_front_on_constructed_points():
    pts = [
        TrialResult(i, {}, {"ppl/x": p, "size/bytes": s}, True)
        for i, (p, s) in enumerate([(10, 5), (12, 3), (11, 6), (15, 1), (12, 3)])
    ]
    front = pareto_front(pts, {"ppl/x": "minimize", "size/bytes": "minimize"})
    assert [t.number for t in front] == [0, 1, 3, 4]  # equal points are both kept


def test_front_is_non_dominated_and_dominates_the_rest():
    rng = random.Random(0)
    pts = [
        TrialResult(
            i,
            {},
            {
                "ppl/x": rng.uniform(10, 20),
                "size/bytes": rng.choice([1, 2, 3, 4]) * 1e6,
                "latency/decode_tok_s": rng.uniform(5, 50),
            },
            True,
        )
        for i in range(60)
    ]
    pts.append(TrialResult(99, {}, {"ppl/x": 11.0}, True))  # missing values: never on the front
    front = pareto_front(pts, OBJ)
    assert 99 not in {t.number for t in front}
    for t in front:
        assert not any(_dominates(o, t) for o in pts[:-1])
    for o in pts[:-1]:
        if o not in front:
            assert any(_dominates(t, o) for t in front)
    layers = front_layers(pts[:-1], OBJ)
    assert layers[0] == front and sum(map(len, layers)) == 60
