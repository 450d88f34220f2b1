"""Search benchmark: the shipped search template on SmolLM2-135M, against a hand-written template.

Runs ``search-40pct-llamacpp`` (targets: <= 40 % of the fp32 artifact's bytes, <= 1.15x
perplexity on python-docs and Hamlet, decode speed on llama.cpp as an objective) with smaller
eval settings so a trial takes a minute or two on 2 cores, then runs the hand-written ``default``
template's stages with the same data, eval and llama.cpp timing, and prints both side by side:
trials run / pruned before running, the front, the best trial meeting every target, and where the
hand-written recipe lands on the same targets.

    python bench/search.py --trials 10 --out bench/results/search
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any


def _small(recipe: Any, windows: int, calib: int) -> Any:
    """The recipe with a smaller eval and calibration set (same sources and seed)."""
    ev = recipe.eval.model_copy(update={"windows": windows, "seq_len": 256})
    cal = recipe.data.calibration.model_copy(update={"n": calib})
    data = recipe.data.model_copy(update={"calibration": cal})
    return recipe.model_copy(update={"eval": ev, "data": data})


def _fmt(v: Any, metric: str) -> str:
    if not isinstance(v, (int, float)):
        return "—"
    return f"{v / 1e6:.1f} MB" if metric == "size/bytes" else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--windows", type=int, default=8, help="eval windows of 256 tokens per dataset")
    ap.add_argument("--calib", type=int, default=8, help="calibration windows of 256 tokens")
    ap.add_argument("--out", default="bench/results/search")
    ap.add_argument("--skip-handwritten", action="store_true")
    ap.add_argument(
        "--method",
        default="gptq",
        choices=["gptq", "rtn", "awq"],
        help="the template's quantizer (rtn: no calibration pass, minutes faster per trial)",
    )
    args = ap.parse_args()

    from slimline.core import make_config
    from slimline.models import load_model
    from slimline.recipe import load_recipe, measure, run_recipe
    from slimline.recipe.targets import check_targets
    from slimline.search import run_search

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("SLIMLINE_BENCH_WORK", "/tmp/slimline-bench-search"))
    shutil.rmtree(work, ignore_errors=True)
    os.environ["SLIMLINE_HOME"] = str(work / "home")  # keys and registry of this bench only
    base = load_recipe("search-40pct-llamacpp")
    s = base.search
    assert s is not None
    budget = s.budget.model_copy(update={"trials": args.trials})
    stages = [
        make_config(f"quant.{args.method}", c.model_dump(mode="json", exclude_unset=True))
        if c.kind == "quant.gptq"
        else c
        for c in base.stages
    ]
    rec = _small(base, args.windows, args.calib).model_copy(
        update={"search": s.model_copy(update={"budget": budget}), "stages": stages}
    )
    t0 = time.perf_counter()
    res = run_search(rec, work / "search", threads=2)
    search_s = time.perf_counter() - t0
    summary = res.to_dict()
    summary["wall_s"] = search_s
    summary["method"] = args.method
    summary["load_avg"] = os.getloadavg()
    if res.plot:
        shutil.copy(res.plot, out / "search_front.png")

    hand: dict[str, Any] | None = None
    if not args.skip_handwritten:  # the hand-written template's stages, judged the same way
        default = load_recipe("default")
        h = rec.model_copy(
            update={"name": "default-small", "stages": default.stages, "search": None}
        )
        h = h.model_copy(
            update={"targets": h.targets.model_copy(update={"min_decode_tok_s": None})}
        )
        h = h.model_copy(update={"eval": h.eval.model_copy(update={"latency": None})})
        t1 = time.perf_counter()
        r = run_recipe(h, work / "default", register=False, report=False, threads=2)
        lat = rec.eval.latency
        cost = measure.cost(load_model(str(r.artifact)), lat)
        metrics = {**r.final, **cost}
        verdicts = check_targets(rec.targets, metrics, r.baseline["metrics"])
        hand = {
            "stages": [c.to_dict() | {"kind": c.kind} for c in default.stages],
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "verdicts": [v.text for v in verdicts],
            "meets_all": all(v.met for v in verdicts),
            "wall_s": time.perf_counter() - t1,
        }
    summary["handwritten_default"] = hand
    (out / "search.json").write_text(json.dumps(summary, indent=2, default=str))

    objs = list(res.objectives)
    print(
        f"search {res.study}: {len(res.trials)} finished, {len(res.pruned)} pruned before running, "
        f"{len(res.failed)} failed, {search_s / 60:.1f} min, load {os.getloadavg()[0]:.1f}"
    )
    head = ["trial", "params", *objs, "front", "meets targets"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    on_front = {t.number for t in res.front}
    for t in sorted(res.trials, key=lambda x: x.number):
        cells = [
            str(t.number) + (f" (= {t.same_as})" if t.same_as is not None else ""),
            json.dumps(t.params),
            *[_fmt(t.metrics.get(m), m) for m in objs],
            "yes" if t.number in on_front else "",
            "yes" if t.feasible else "no",
        ]
        print("| " + " | ".join(cells) + " |")
    for p in res.pruned:
        print(f"pruned {p['trial']} {json.dumps(p['params'])}: {p['reason']}")
    if res.best:
        print(f"best meeting every target: trial {res.best.number} {res.best.params}")
    else:
        print("no trial meets every target; nearest:", json.dumps(res.nearest, default=str))
    if hand:
        print("hand-written default:", " | ".join(hand["verdicts"]))


if __name__ == "__main__":
    main()
