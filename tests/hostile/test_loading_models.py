"""Issue 16, items 4-7 and 10: a model that is incomplete, half-saved, unsigned, non-finite or
asks to run its own code is refused with one error line, whatever command loads it.

Each fixture is made at test time from a tiny random llama saved by transformers; each CLI case
checks the one-line error, the exit code, and that the directory tree is unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from hostile_util import tree
from safetensors.torch import load_file, save_file

EVAL = ("--windows", "1", "--seq-len", "16", "--suite", "ppl", "--threads", "1")


@pytest.fixture
def saved(tiny_llama_dir):
    """The session's tiny llama (tied embeddings) saved by transformers; tests copy it before
    changing anything."""
    return tiny_llama_dir


@pytest.fixture
def model_dir(saved, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(saved, d)
    return d


def edit_weights(d, fn) -> None:
    f = d / "model.safetensors"
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --- 4. missing / unexpected tensors -------------------------------------------------------


@pytest.mark.parametrize(
    "edit, named",
    [
        (
            lambda t: t.pop("model.layers.0.mlp.down_proj.weight"),
            "missing model.layers.0.mlp.down_proj.weight",
        ),
        (
            lambda t: t.update({"model.extra.weight": torch.zeros(3)}),
            "unexpected model.extra.weight",
        ),
    ],
    ids=["missing", "unexpected"],
)
def test_incomplete_weights_are_refused_by_every_command(cli, model_dir, tmp_path, edit, named):
    edit_weights(model_dir, edit)
    before = tree(tmp_path)
    for args in (
        ("eval", model_dir, *EVAL),
        ("prune", model_dir, "-o", tmp_path / "out", "--method", "magnitude", "--sparsity", "0.5"),
        ("quantize", model_dir, "-o", tmp_path / "q", "--method", "rtn"),
        ("profile", model_dir, "--modules"),
    ):
        res = cli(*args)
        assert res.code == 2, (args, res.err)
        line = res.error_line()
        assert "do not match the model" in line and named in line, line
        assert tree(tmp_path) == before


def test_tied_weights_and_buffers_of_every_family_still_load(tmp_path):
    """The legitimately absent tensors (a tied lm_head, non-persistent buffers) are no error."""
    from slimline.models import load_model, tiny_model

    for fam in ("llama", "qwen2", "gpt2", "opt", "bert"):
        lm = tiny_model(fam)
        lm.model.save_pretrained(tmp_path / fam)
        lm.tokenizer.save_pretrained(tmp_path / fam)
        back = load_model(tmp_path / fam)
        ref, got = lm.model.state_dict(), back.model.state_dict()
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


# --- 5. an artifact without its manifest -----------------------------------------------------


@pytest.mark.parametrize("also_remove_sig", [False, True], ids=["manifest", "manifest+sig"])
def test_artifact_without_manifest_is_refused_not_loaded_as_hf(
    cli, saved, tmp_path, also_remove_sig, home
):
    from slimline.artifact import save_artifact
    from slimline.models import load_model

    art = save_artifact(load_model(saved), None, tmp_path / "art").path
    edit_weights_keep_meta(art)  # tampered: would be refused by the verifier
    (art / "slimline.json").unlink()
    if also_remove_sig:
        (art / "slimline.sig").unlink()
    before = tree(tmp_path)
    res = cli("eval", art, *EVAL)
    assert res.code == 3, res.err
    line = res.error_line()
    assert "looks like a slimline artifact" in line and "no slimline.json" in line
    assert tree(tmp_path) == before


def edit_weights_keep_meta(art) -> None:
    from safetensors import safe_open

    f = art / "model.safetensors"
    with safe_open(str(f), "pt") as h:
        meta = h.metadata()
    t = load_file(f)
    t["model.norm.weight"] = t["model.norm.weight"] * 1e3
    save_file(t, f, metadata=meta)


# --- 6. temp dirs of a killed save -------------------------------------------------------------


def test_a_killed_save_leaves_an_unloadable_temp_dir_that_the_next_save_removes(
    cli, saved, tmp_path, home
):
    """A real save killed (SIGKILL) after the weights were written."""
    out = tmp_path / "out"
    code = f"""
import sys, time
import slimline.artifact.io as io
from slimline.models import load_model
real = io.sha256_file
def stall(p, *a):
    print("ready", flush=True)
    time.sleep(600)
io.sha256_file = stall
io.save_artifact(load_model({str(saved)!r}), None, {str(out)!r})
"""
    env = {**os.environ, "SLIMLINE_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready"
    finally:
        proc.kill()
        proc.wait()
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert (left / "model.safetensors").is_file() and not out.exists()
    before = tree(tmp_path)
    res = cli("eval", left, *EVAL)
    assert res.code == 2, res.err
    assert "unfinished save of 'out'" in res.error_line()
    assert tree(tmp_path) == before
    (tmp_path / "keep.txt").write_text("a user's file")
    res = cli("prune", saved, "-o", out, "--method", "magnitude", "--sparsity", "0.5")
    assert res.code == 0, res.err
    assert not left.exists() and out.is_dir() and (tmp_path / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "keep.txt", "out"]


def test_leftovers_are_cleaned_only_when_their_writer_is_gone(saved, tmp_path, home):
    from slimline.artifact import save_artifact
    from slimline.artifact.atomic import PARTIAL_MARK, STALE_AFTER_S
    from slimline.models import load_model

    lm = load_model(saved)

    def leftover(name, pid=None, age=0.0):
        d = tmp_path / name
        shutil.copytree(saved, d)
        if pid is not None:
            (d / PARTIAL_MARK).write_text(json.dumps({"pid": pid, "host": os.uname().nodename}))
        t = time.time() - age
        for p in [d, *d.rglob("*")]:
            os.utime(p, (t, t))
        return d

    dead = leftover(f".a.tmp-{dead_pid()}-0a0b0c0d", pid=dead_pid())
    live = leftover(f".a.tmp-{os.getppid()}-1a1b1c1d", pid=os.getppid())  # a running writer
    legacy_old = leftover(".a.tmp-2a2b2c2d", age=STALE_AFTER_S + 60)  # older slimline, abandoned
    legacy_new = leftover(".a.tmp-3a3b3c3d")  # might still be written: kept
    other = leftover(f".b.tmp-{dead_pid()}-4a4b4c4d", pid=dead_pid())  # another output's
    save_artifact(lm, None, tmp_path / "a")
    assert not dead.exists() and not legacy_old.exists()
    assert live.exists() and legacy_new.exists() and other.exists()


def test_an_overwrite_killed_between_its_renames_gets_the_old_output_back(saved, tmp_path, home):
    from slimline.artifact import save_artifact
    from slimline.artifact.atomic import PARTIAL_MARK
    from slimline.errors import InputError
    from slimline.models import load_model

    lm = load_model(saved)
    first = save_artifact(lm, None, tmp_path / "a")
    aside = tmp_path / f".a.old-{dead_pid()}-5a5b5c5d"
    os.replace(first.path, aside)
    (aside / PARTIAL_MARK).write_text(json.dumps({"pid": dead_pid(), "host": os.uname().nodename}))
    with pytest.raises(InputError, match="already exists"):
        save_artifact(lm, None, tmp_path / "a")  # not asked to overwrite: the old one is back
    assert (tmp_path / "a" / "slimline.json").is_file() and not aside.exists()


# --- 7. NaN / Inf weights and metrics, and JSON that stays JSON ----------------------------------


def _strict_json(text: str):
    def refuse(c):
        raise AssertionError(f"bare {c} in JSON output")

    return json.loads(text, parse_constant=refuse)


def test_nan_weights_are_refused_by_eval_and_prune(cli, model_dir, tmp_path):
    def poison(t):
        w = t["model.layers.1.self_attn.q_proj.weight"]
        w[0, 0], w[1, 1] = float("nan"), float("inf")

    edit_weights(model_dir, poison)
    before = tree(tmp_path)
    for args in (
        ("eval", model_dir, *EVAL, "--json"),
        ("prune", model_dir, "-o", tmp_path / "out", "--method", "magnitude", "--sparsity", "0.5"),
    ):
        res = cli(*args)
        assert res.code == 2, res.err
        line = res.error_line()
        assert "tensor model.layers.1.self_attn.q_proj.weight holds 2 non-finite" in line
        assert res.out == "" and tree(tmp_path) == before


def test_non_finite_metrics_are_an_error_naming_the_module(cli, model_dir, tmp_path):
    edit_weights(model_dir, lambda t: t["model.norm.weight"].fill_(3e38))  # finite, overflows
    before = tree(tmp_path)
    res = cli("eval", model_dir, *EVAL, "--json")
    assert res.code == 2, res.err
    line = res.error_line()
    assert "ppl/python-docs = nan" in line and "first module with a non-finite output is" in line
    assert "nan" not in res.out.lower() and tree(tmp_path) == before


def test_json_output_is_always_valid_json(capsys):
    from slimline.cli._common import emit_json, jsonable

    emit_json({"ppl": float("nan"), "kl": [float("inf"), -float("inf")], "t": torch.tensor(2.5)})
    assert _strict_json(capsys.readouterr().out) == {"ppl": "nan", "kl": ["inf", "-inf"], "t": 2.5}
    assert jsonable({1: (float("nan"),)}) == {"1": ["nan"]}


def test_save_artifact_never_signs_nan_weights(tmp_path, home):
    from slimline.artifact import save_artifact
    from slimline.errors import NonFiniteError
    from slimline.models import tiny_model

    lm = tiny_model("llama")
    with torch.no_grad():
        lm.model.model.layers[0].mlp.up_proj.weight[3, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"model\.layers\.0\.mlp\.up_proj\.weight"):
        save_artifact(lm, None, tmp_path / "a")
    assert [p.name for p in tmp_path.iterdir() if p.name != "home"] == []  # no temp dir left


# --- 10. a config that asks to run the model's own code ------------------------------------------


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_auto_map_is_refused_without_running_or_prompting(
    cli, model_dir, tmp_path, where, monkeypatch
):
    sentinel = tmp_path / "code-ran"
    (model_dir / "evil.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('pwned')\n"
        "from transformers import LlamaForCausalLM, PreTrainedTokenizerFast\n"
        "class Evil(LlamaForCausalLM): pass\n"
        "class EvilTok(PreTrainedTokenizerFast): pass\n"
    )
    f = model_dir / where
    cfg = json.loads(f.read_text())
    cfg["auto_map"] = (
        {"AutoModelForCausalLM": "evil.Evil"}
        if where == "config.json"
        else {"AutoTokenizer": [None, "evil.EvilTok"]}
    )
    f.write_text(json.dumps(cfg))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: x\nmodel: {model_dir}\n")

    class NoPrompt:
        def readline(self, *a):
            raise AssertionError("slimline prompted for trust_remote_code")

        read = readline

    monkeypatch.setattr(sys, "stdin", NoPrompt())
    before = tree(tmp_path)
    for args in (("profile", model_dir, "--modules"), ("recipe", "validate", recipe)):
        res = cli(*args)
        assert res.code == 2, res.err
        line = res.error_line()
        assert "asks to run its own Python code" in line and "evil." in line
        assert "SLIMLINE_TRUST_REMOTE_CODE=1" in res.err and "trust_remote_code=True" in res.err
        assert not sentinel.exists() and tree(tmp_path) == before
