"""Issue 16, items 8, 12, 13, 16: the registry never trusts its store blindly; outputs are
checked before the work; bad numbers and foreign files are error lines, not tracebacks."""

from __future__ import annotations

import json
import shutil

import pytest
from hostile_util import flip_last_byte, tree

from slimline.artifact.spec import WEIGHTS
from slimline.registry import Registry

# --- 8. promotion verifies; a corrupt stored copy is replaced by a verified one, or refused ---


def test_promote_refuses_a_version_whose_stored_copy_fails(cli, home, artifacts):
    reg = Registry(home)
    v = reg.register(artifacts[0], "tiny")
    flip_last_byte(v.path / WEIGHTS)
    assert cli("registry", "verify", "tiny@1").code == 3  # the failure is logged ...
    for extra in ([], ["--force", "--reason", "ship it"]):  # ... and no override skips it
        res = cli("registry", "promote", "tiny@1", "production", *extra)
        assert res.code == 3, res.err
        assert "refusing to promote tiny@1" in res.error_line()
    assert Registry(home).get("tiny@1").aliases == []
    assert reg.audit(1)[0]["action"] == "promote_refused"


def test_registering_again_repairs_a_corrupt_stored_copy(cli, home, artifacts):
    reg = Registry(home)
    v = reg.register(artifacts[0], "tiny")
    flip_last_byte(v.path / WEIGHTS)
    res = cli("registry", "register", artifacts[0], "tiny")
    assert res.code == 0, res.err
    assert reg.verify("tiny@1").ok and reg.verify("tiny@2").ok
    assert cli("registry", "promote", "tiny@1", "production").code == 0


def test_a_corrupt_incoming_copy_of_a_stored_digest_is_refused_naming_the_users_path(
    cli, home, artifacts, tmp_path
):
    reg = Registry(home)
    reg.register(artifacts[0], "tiny")
    bad = tmp_path / "my-copy"
    shutil.copytree(artifacts[0], bad)
    flip_last_byte(bad / WEIGHTS)  # same manifest, so the same digest as the stored copy
    before = tree(home)
    res = cli("registry", "register", bad, "tiny")
    assert res.code == 3, res.err
    line = res.error_line()
    assert str(bad) in line and ".tmp-" not in res.err  # item 16: the user's path, not ours
    after = tree(home)
    assert {k: v for k, v in after.items() if not k.startswith("registry.db")} == {
        k: v for k, v in before.items() if not k.startswith("registry.db")
    }
    assert [x.ref for x in reg.list()] == ["tiny@1"]


# --- 12. every output location is checked before the work starts -----------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["quantize", "{model}", "-o", "{out}", "--method", "rtn"],
        ["prune", "{model}", "-o", "{out}", "--method", "magnitude", "--sparsity", "0.5"],
        ["export", "{model}", "-o", "{out}.gguf"],
        ["distill", "--teacher", "{model}", "--student-from", "{model}:keep=1", "-o", "{out}"],
        ["run", "{recipe}", "-o", "{out}", "--no-register"],
    ],
    ids=lambda c: c[0],
)
def test_unwritable_output_is_refused_before_the_model_loads(
    cli, tiny_llama_dir, tmp_path, unwritable, no_model_load, command
):
    from hostile_util import write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", tiny_llama_dir)
    out = unwritable / "out"
    before = tree(tmp_path)
    args = [a.format(model=tiny_llama_dir, out=out, recipe=recipe) for a in command]
    res = cli(*args)
    assert res.code == 2, res.err
    assert "is not writable" in res.error_line()
    assert tree(tmp_path) == before and not out.exists()


def test_distill_checks_out_model_before_training(cli, tiny_llama_dir, tmp_path, no_model_load):
    out = tmp_path / "d"
    (out / "model").mkdir(parents=True)
    (out / "model" / "notes.md").write_text("not an artifact: must survive")
    before = tree(tmp_path)
    res = cli(
        "distill", "--teacher", tiny_llama_dir, "--student-from", f"{tiny_llama_dir}:keep=1",
        "-o", out, "--max-steps", "1",
    )  # fmt: skip
    assert res.code == 2 and "student model dir" in res.error_line()
    assert tree(tmp_path) == before


# --- 13. bad thread counts and foreign files: error lines, nothing half-created ---------------


def test_eval_threads_zero_is_an_error_line(cli, tiny_llama_dir, no_model_load):
    res = cli("eval", tiny_llama_dir, "--threads", "0")
    assert res.code == 2 and "threads" in res.error_line()


@pytest.mark.parametrize("threads", ["-1", "0"])
def test_run_bad_threads_is_refused_before_the_run_dir_exists(
    cli, tiny_llama_dir, tmp_path, no_model_load, threads
):
    from hostile_util import write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", tiny_llama_dir)
    before = tree(tmp_path)
    res = cli("run", recipe, "-o", tmp_path / "run", "--threads", threads, "--no-register")
    assert res.code == 2 and "threads" in res.error_line()
    assert tree(tmp_path) == before  # no half-created run dir


def test_report_on_a_foreign_run_json_is_an_error_line(cli, tmp_path):
    d = tmp_path / "exp"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"loss": [1.0, 0.5], "status": "done"}))
    before = tree(tmp_path)
    res = cli("report", d)
    assert res.code == 2 and "was not written by `slimline run`" in res.error_line()
    assert tree(tmp_path) == before


# --- 16. a report of an unfinished run is refused, not rendered as finished ---------------------


def test_report_refuses_an_unfinished_run(cli, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    state = {  # what `slimline run` records when it starts (before any stage finished)
        "format": "slimline-run",
        "format_version": 1,
        "work_digest": "ab" * 32,
        "recipe_digest": "cd" * 32,
        "recipe": {"name": "x", "model": "smollm2-135m", "stages": [{"kind": "quant.rtn"}]},
        "started_at": "2026-01-01T00:00:00+00:00",
        "stages": [],
        "status": "running",
        "environment": {},
    }
    (d / "run.json").write_text(json.dumps(state))
    before = tree(tmp_path)
    res = cli("report", d)
    assert res.code == 2 and "unfinished run" in res.error_line()
    assert tree(tmp_path) == before  # no report.html or MODEL_CARD.md claiming a result
