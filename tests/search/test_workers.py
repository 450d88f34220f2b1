"""Two worker processes (`slimline search worker`) on one study share the budget: no trial runs
twice, no trial beyond the budget starts."""

import ast
import os
import subprocess
import sys

from optuna.trial import TrialState

from conftest import search_recipe
from slimline.recipe import parse_recipe
from slimline.registry import Registry
from slimline.search.study import create_study, storage_url

OBJ = {"ppl/python-docs": "minimize", "size/bytes": "minimize"}


def _cli_worker(name, url, run_dir, index):
    cmd = [sys.executable, "-m", "slimline.cli", "search", "worker", name, "--storage", url]
    cmd += ["--run-dir", str(run_dir), "--index", str(index), "--threads", "1"]
    env = {**os.environ, "SLIMLINE_QUIET": "1", "TQDM_DISABLE": "1", "COLUMNS": "200"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_worker_processes_share_the_budget_without_duplicates(tiny_dir, tmp_path, home):
    rec = parse_recipe(
        search_recipe(
            tiny_dir,
            [{"quant.rtn": {"bits": 4, "group_size": 32}}],
            {
                "space": {"0.bits": [2, 3, 4, 8], "0.group_size": [16, 32, 64]},
                "objectives": OBJ,
                "budget": {"trials": 4},
            },
        )
    )
    run_dir = tmp_path / "s"
    run_dir.mkdir()
    url = storage_url(None, run_dir)
    study = create_study(rec, url)
    procs = [_cli_worker(study.study_name, url, run_dir, i) for i in (1, 2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    # "N trial(s) run by this worker: [..]"
    ran = [ast.literal_eval(o.strip().splitlines()[-1].split(": ", 1)[1]) for o, _ in outs]
    trials = study.get_trials()
    assert len(trials) == 4  # the budget, not one more
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    done = sorted(n for r in ran for n in r)
    assert len(done) == len(set(done))  # no trial was run by both
    run = sorted(t.number for t in trials if "same_as" not in t.user_attrs)
    # each trial ran once, in its own run dir, and was registered once
    assert sorted(int(d.name) for d in (run_dir / "trials").iterdir()) == run
    assert len(Registry(home).list(f"{rec.name}-candidate")) == len(run)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes took part
