"""Issue 16, items 1-3: nothing the user did not ask to delete is deleted or overwritten."""

from __future__ import annotations

import json
import shutil

import pytest
from hostile_util import tree, write_recipe

from slimline.registry import Registry

# --- 1. registry gc with a database that did not create the store's records ----------------


def _populated(home, artifacts):
    reg = Registry(home)
    for a in artifacts:
        reg.register(a, "tiny")
    (reg.store / "notes.txt").write_text("a user's file")
    (reg.store / "mine").mkdir()
    return reg


@pytest.mark.parametrize("how", ["emptied", "missing", "redirected"])
def test_gc_refuses_a_store_its_database_did_not_fill(
    cli, home, artifacts, tmp_path, how, monkeypatch
):
    reg = _populated(home, artifacts)
    before = tree(reg.store)
    if how == "redirected":
        monkeypatch.setenv("SLIMLINE_REGISTRY_DB", str(tmp_path / "new" / "registry.db"))
    else:
        for f in home.glob("registry.db*"):
            f.unlink()
        if how == "emptied":
            (home / "registry.db").write_bytes(b"")
    for args in (["--dry-run"], []):
        res = cli("registry", "gc", *args)
        assert res.code == 5, res.err
        assert "refusing to garbage-collect" in res.error_line()
        assert tree(reg.store) == before  # every stored artifact and user file is still there


def test_gc_removes_only_its_own_unreferenced_blobs(cli, home, artifacts):
    reg = _populated(home, artifacts)
    gone = reg.get("tiny@2").path
    reg.delete("tiny@2")
    # a digest-named copy this database never registered is not provably its own either
    foreign = reg.store / ("f" * 64)
    shutil.copytree(artifacts[0], foreign)
    before = tree(reg.store)
    res = cli("registry", "gc", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out) == [gone.name]
    after = tree(reg.store)
    assert {k for k in before if k not in after} == {
        k for k in before if k.split("/")[0] == gone.name
    }
    assert (reg.store / "notes.txt").read_text() == "a user's file" and foreign.is_dir()


# --- 2. run --fresh only replaces a provable run dir, by rename ----------------------------


def test_fresh_refuses_a_dir_with_a_foreign_run_json(cli, tiny_llama_dir, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_llama_dir)
    d = tmp_path / "work"
    d.mkdir()
    (d / "run.json").write_text('{"my": "own run.json, from another tool"}')
    (d / "thesis.tex").write_text("two years of work")
    before = tree(d)
    res = cli("run", recipe, "-o", d, "--fresh", "--no-register")
    assert res.code == 2, res.err
    assert "did not write" in res.error_line()
    assert tree(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "work"]


def test_fresh_moves_a_real_run_aside_instead_of_deleting_it(cli, tiny_llama_dir, tmp_path, home):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_llama_dir)
    d = tmp_path / "run"
    assert cli("run", recipe, "-o", d, "--no-register", "--threads", "1").code == 0
    before = tree(d)
    res = cli("run", recipe, "-o", d, "--fresh", "--no-register", "--threads", "1", "--json")
    assert res.code == 0, res.err
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(moved) == 1 and json.loads(res.out)["replaced"] == str(moved[0])
    assert tree(moved[0]) == before  # the old run, byte for byte
    assert json.loads((d / "run.json").read_text())["status"] == "finished"


# --- 3. export never overwrites, and a directory is an error line ---------------------------


def test_export_refuses_an_existing_file(cli, tiny_llama_dir, tmp_path, no_model_load):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"the user's only copy")
    res = cli("export", tiny_llama_dir, "-o", f)
    assert res.code == 2 and "already exists" in res.error_line()
    assert f.read_bytes() == b"the user's only copy"


def test_export_to_a_directory_is_an_error_line(cli, tiny_llama_dir, tmp_path, no_model_load):
    d = tmp_path / "out"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    before = tree(tmp_path)
    res = cli("export", tiny_llama_dir, "-o", d)
    assert res.code == 2 and "is a directory" in res.error_line()
    assert tree(tmp_path) == before
