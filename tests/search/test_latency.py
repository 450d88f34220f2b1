"""Engine costs are measured only for trials on or near the front, and judged there."""

from conftest import search_recipe
from slimline.recipe import parse_recipe
from slimline.search import pareto_front, run_search

LAT = {
    "engine": "torch",
    "threads": 1,
    "prefill_tokens": 16,
    "decode_tokens": 4,
    "prompt_tokens": 8,
    "repeats": 1,
}


def test_latency_is_measured_near_the_front_only_and_decides_the_targets(tiny_dir, tmp_path, home):
    rec = search_recipe(
        tiny_dir,
        [{"quant.rtn": {"bits": 4, "group_size": 32}}],
        {
            "space": {"0.bits": [2, 3, 4, 8], "0.group_size": [16, 32, 64]},
            "objectives": {
                "latency/decode_tok_s": "maximize",
                "kl/teacher": "minimize",
                "size/bytes": "minimize",
            },
            "budget": {"trials": 6},
            "near_front": 0,
        },
        targets={"min_decode_tok_s": {"value": 0.01, "engine": "torch", "threads": 1}},
    )
    rec["eval"]["latency"] = LAT
    res = run_search(parse_recipe(rec), tmp_path / "s", register=False)
    ran = [t for t in res.trials if t.same_as is None]
    measured = {t.number for t in ran if t.cost_measured}
    # the front of the cheap objectives (KL, size) got latency; nothing else was timed
    cheap = pareto_front(ran, {"kl/teacher": "minimize", "size/bytes": "minimize"})
    assert measured == {t.number for t in cheap}
    for t in ran:
        has = "latency/decode_tok_s" in t.metrics
        assert has == (t.number in measured)
        # a latency target is met only where it was measured, never assumed
        assert t.feasible == has
        cost_file = tmp_path / "s" / "trials" / f"{t.number:04d}" / "cost.json"
        assert cost_file.exists() == has
    assert res.best is not None and res.best.number in measured
    for t in res.trials:  # a reused point is judged on its twin's measurements, latency too
        if t.same_as is not None:
            twin = next(o for o in res.trials if o.number == t.same_as)
            assert t.feasible == twin.feasible and t.metrics == twin.metrics
    assert {t.number for t in res.front} <= measured
