"""A killed worker's trial is failed with its reason, queued again and finished by another
worker; the study completes its budget."""

import os
import signal
import subprocess
import sys
import time

from optuna.trial import TrialState

from conftest import RECIPE_TESTS, search_recipe
from slimline.recipe import parse_recipe
from slimline.search import run_search
from slimline.search.study import create_study, storage_url

OBJ = {"ppl/python-docs": "minimize", "size/bytes": "minimize"}
JOIN = (
    "import sys; sys.path.insert(0, {tests!r}); import helpers; "
    "from slimline.search import join_study; "
    "print(join_study({name!r}, {url!r}, {run_dir!r}, index={index}))"
)


def _worker(name, url, run_dir, index):
    code = JOIN.format(
        tests=str(RECIPE_TESTS), name=name, url=url, run_dir=str(run_dir), index=index
    )
    env = {**os.environ, "SLIMLINE_QUIET": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )


def test_a_killed_workers_trial_is_failed_with_its_reason_and_the_study_completes(
    tiny_dir, tmp_path, home
):
    signal_file = tmp_path / "started"
    rec = parse_recipe(
        search_recipe(
            tiny_dir,
            [{"test.rtn": {"bits": 8, "delay_s": 120, "signal": str(signal_file)}}],
            {
                "space": {"0.bits": [4, 8]},
                "objectives": OBJ,
                "budget": {"trials": 2},
                "heartbeat_s": 1,
            },
        )
    )
    run_dir = tmp_path / "s"
    run_dir.mkdir()
    url = storage_url(None, run_dir)
    study = create_study(rec, url)
    p = _worker(study.study_name, url, run_dir, 1)
    t0 = time.monotonic()
    while not signal_file.exists():  # the worker is inside its first trial's stage
        assert p.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed = study.get_trials()[0]
    assert killed.state == TrialState.RUNNING  # nobody has noticed yet

    res = run_search(rec, run_dir)  # resumes the study: notices the silence, redoes the point
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL
    (fail,) = res.failed
    assert fail["trial"] == 0 and "stopped sending heartbeats" in fail["reason"]
    assert f":{p.pid}" in fail["reason"]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2  # the budget is complete
    retry = next(t for t in done if t.user_attrs.get("retry_of") == 0)
    assert retry.params == killed.params
    if "same_as" not in retry.user_attrs:  # else an equal point had finished meanwhile: reused
        assert retry.user_attrs["run_dir"].endswith("trials/0000")  # resumed the dead run
