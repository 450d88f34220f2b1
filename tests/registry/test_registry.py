"""Registry: versions, refs, lineage, gates, promotion, rollback, gc, audit, failure modes."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from slimline.artifact import WEIGHTS
from slimline.errors import ConfigError, IntegrityError, RegistryError
from slimline.registry import Registry


def _register_line(reg, arts):
    b = reg.register(arts["base"].path, "tiny")
    c = reg.register(arts["child"].path, "tiny")
    g = reg.register(arts["grand"].path, "tiny")
    return b, c, g


def test_register_stores_content_addressed_copy_and_resolves_refs(reg, lineage_artifacts):
    arts = lineage_artifacts
    b, c, g = _register_line(reg, arts)
    assert [v.version for v in (b, c, g)] == [1, 2, 3]
    assert c.path == reg.store / arts["child"].digest and (c.path / WEIGHTS).is_file()
    assert c.parent == arts["base"].digest
    assert c.metrics == {"ppl/python-docs": 13.1, "size/bytes": 400.0}
    assert c.recipe == {"stages": ["quant.rtn"]} and c.data_fingerprint == "sha256:abc"
    assert c.environment["torch"] and c.created_by
    assert reg.get("tiny@2").digest == arts["child"].digest
    assert reg.get("tiny").version == 3  # bare name = latest
    assert reg.get(arts["base"].digest[:10]).version == 1
    with pytest.raises(RegistryError, match="no registered version"):
        reg.get("tiny@9")
    # Registering the same artifact again is a new version of the same stored copy.
    again = reg.register(arts["child"].path, "tiny", metrics={"ppl/python-docs": 13.0})
    assert again.version == 4 and again.path == c.path and again.metrics["ppl/python-docs"] == 13.0
    assert [v.ref for v in reg.list("tiny")] == ["tiny@1", "tiny@2", "tiny@3", "tiny@4"]
    assert reg.verify("tiny@2").ok


def test_lineage_follows_parents(reg, lineage_artifacts):
    _register_line(reg, lineage_artifacts)
    assert [v.ref for v in reg.lineage("tiny@3")] == ["tiny@3", "tiny@2", "tiny@1"]
    assert [v.ref for v in reg.lineage("tiny@1")] == ["tiny@1"]


def test_register_refuses_tampered_artifact_and_keeps_nothing(reg, lineage_artifacts, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(lineage_artifacts["child"].path, bad)
    m = json.loads((bad / "slimline.json").read_text())
    m["metrics"]["ppl/python-docs"] = 1.0
    (bad / "slimline.json").write_text(json.dumps(m))
    with pytest.raises(IntegrityError, match="signature"):
        reg.register(bad, "tiny")
    assert reg.list() == [] and list(reg.store.iterdir()) == []
    assert reg.audit(1)[0]["action"] == "register_refused"


def test_failed_transaction_rolls_back_row_and_store_copy(reg, lineage_artifacts, monkeypatch):
    real = Registry._audit

    def failing(self, db, action, ref, **details):
        if action == "register":
            raise RuntimeError("crash inside the transaction (simulated)")
        return real(self, db, action, ref, **details)

    monkeypatch.setattr(Registry, "_audit", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        reg.register(lineage_artifacts["base"].path, "tiny")
    monkeypatch.setattr(Registry, "_audit", real)
    assert reg.list() == []
    assert list(reg.store.iterdir()) == []  # neither the final dir nor the temp copy


def test_promotion_blocked_by_failing_gate_allowed_when_passing(reg, lineage_artifacts):
    _register_line(reg, lineage_artifacts)
    reg.set_gates("production", ["ppl/python-docs <= 1.05 x parent", "size/bytes <= 500"])
    # tiny@1 has no parent (gate skipped) but 1000 bytes > 500: blocked.
    rep = reg.promote("tiny@1", "production")
    assert not rep.promoted and [r.metric for r in rep.failures] == ["size/bytes"]
    assert rep.results[0].status == "skipped"
    # tiny@2: 13.1 <= 1.05 x 12.8 = 13.44 and 400 <= 500: promoted.
    rep = reg.promote("tiny@2", "production")
    assert rep.promoted and rep.passed
    ppl = rep.results[0]
    assert (ppl.value, ppl.reference_ref, ppl.reference_value) == (13.1, "tiny@1", 12.8)
    assert ppl.threshold == pytest.approx(13.44)
    # tiny@3: 16.0 > 1.05 x 13.1 = 13.755: blocked, alias stays on tiny@2.
    rep = reg.promote("tiny@3", "production")
    assert not rep.promoted and rep.failures[0].detail.startswith("ppl/python-docs 16 <= 13.755")
    assert reg.get("tiny@production").version == 2
    # --force needs a reason, and the reason is audited.
    with pytest.raises(ConfigError, match="reason"):
        reg.promote("tiny@3", "production", force=True)
    rep = reg.promote("tiny@3", "production", force=True, reason="hotfix approved by QA")
    assert rep.promoted and rep.forced and rep.previous == "tiny@2"
    row = reg.audit(1)[0]
    assert (
        row["action"] == "promote"
        and row["details"]["forced"]
        and row["details"]["reason"] == "hotfix approved by QA"
    )


def test_gates_against_current_holder_and_baseline(reg, lineage_artifacts):
    _register_line(reg, lineage_artifacts)
    reg.set_gates("staging", ["ppl/python-docs <= current + 0.5"])
    reg.set_gates(
        "staging", ["ppl/python-docs <= baseline + 1"], name="tiny"
    )  # per-model override wins
    assert [str(x) for x in reg.gates("staging", name="tiny")] == [
        "ppl/python-docs <= baseline + 1"
    ]
    assert reg.promote("tiny@2", "staging").promoted  # 13.1 <= 12.8 + 1 (baseline = lineage root)
    assert not reg.promote("tiny@3", "staging").promoted  # 16.0 > 13.8
    reg.set_gates("staging", ["ppl/python-docs <= current + 0.5"], name="tiny")
    res = reg.check_gates("tiny@1", "staging")  # 12.8 <= 13.1 + 0.5 (current holder tiny@2)
    assert res[0].passed and res[0].reference_ref == "tiny@2"


def test_rollback_restores_previous_holders_in_order(reg, lineage_artifacts):
    _register_line(reg, lineage_artifacts)
    for ref in ("tiny@1", "tiny@2", "tiny@3"):
        assert reg.promote(ref, "production").promoted  # no gates set: nothing to block
    assert reg.rollback("production").ref == "tiny@2"
    assert reg.get("tiny@production").ref == "tiny@2"
    assert reg.rollback("tiny@production").ref == "tiny@1"
    with pytest.raises(RegistryError, match="no previous holder"):
        reg.rollback("production")
    assert reg.get("tiny@production").ref == "tiny@1"


def test_delete_and_gc(reg, lineage_artifacts):
    b, c, g = _register_line(reg, lineage_artifacts)
    reg.promote("tiny@1", "production")
    with pytest.raises(RegistryError, match="holds aliases"):
        reg.delete("tiny@1")
    reg.delete("tiny@3", reason="bad run")
    (reg.store / "not-a-digest").mkdir()  # a user's folder: gc never removes what it did not store
    assert reg.gc(dry_run=True) == [g.digest]
    assert g.path.exists()
    assert reg.gc() == [g.digest]
    assert not g.path.exists() and b.path.exists() and c.path.exists()
    assert (reg.store / "not-a-digest").is_dir()
    assert reg.gc() == []


def test_every_action_is_audited_and_the_log_is_append_only(reg, lineage_artifacts):
    _register_line(reg, lineage_artifacts)
    reg.set_gates("production", ["size/bytes <= 500"])
    reg.promote("tiny@1", "production")  # fails the gate
    reg.promote("tiny@2", "production")
    reg.promote("tiny@3", "production")
    reg.rollback("production")
    reg.verify("tiny@2")
    reg.delete("tiny@1")
    reg.gc()
    actions = [r["action"] for r in reversed(reg.audit(100))]
    assert actions == ["register"] * 3 + [
        "set_gates",
        "gate_failed",
        "promote",
        "promote",
        "rollback",
        "verify",
        "delete",
        "gc",
    ]
    row = reg.audit(1, action="rollback")[0]
    assert row["who"] and row["at"] and row["details"] == {"from_ref": "tiny@3", "to_ref": "tiny@2"}
    db = sqlite3.connect(reg.db_path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET who='nobody'")
    db.close()


def test_verify_detects_tampering_in_the_store(reg, lineage_artifacts):
    v = reg.register(lineage_artifacts["base"].path, "tiny")
    w = v.path / WEIGHTS
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    rep = reg.verify("tiny@1")
    assert not rep.ok and WEIGHTS in rep.problems[0][0]
    assert reg.audit(1)[0]["details"]["ok"] is False


def test_locked_database_gives_registry_error_with_fix(home, lineage_artifacts):
    reg = Registry(home, timeout=0.2)
    holder = sqlite3.connect(reg.db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RegistryError, match="locked") as err:
            reg.register(lineage_artifacts["base"].path, "tiny")
        assert "retry" in err.value.fix
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert reg.list() == [] and list(reg.store.iterdir()) == []  # the copy was cleaned up
    assert reg.register(lineage_artifacts["base"].path, "tiny").version == 1


def test_corrupt_database_gives_registry_error_with_fix(home):
    home.mkdir(parents=True, exist_ok=True)
    (home / "registry.db").write_bytes(b"this is not sqlite, just garbage bytes " * 200)
    with pytest.raises(RegistryError, match="corrupt") as err:
        Registry(home)
    assert "move" in err.value.fix and err.value.exit_code == 5


def test_bad_names_and_aliases(reg, lineage_artifacts):
    with pytest.raises(ConfigError):
        reg.register(lineage_artifacts["base"].path, "bad@name")
    reg.register(lineage_artifacts["base"].path, "tiny")
    with pytest.raises(ConfigError):
        reg.promote("tiny@1", "7")


def test_explicit_parent_custom_db_path_and_load(home, lineage_artifacts, tmp_path):
    reg = Registry(home, db_path=tmp_path / "elsewhere" / "reg.sqlite")
    assert reg.db_path.exists() and not (home / "registry.db").exists()
    a = reg.register(lineage_artifacts["grand"], "a")  # an ArtifactInfo works as well as a path
    b = reg.register(lineage_artifacts["base"].path, "b", parent="a@1")
    assert b.parent == a.digest
    assert [v.ref for v in reg.lineage("b@1")] == ["b@1", "a@1"]
    model, tok, manifest = reg.load("b@1")
    assert tok is None and manifest["metrics"]["size/bytes"] == 1000
    assert sum(p.numel() for p in model.parameters()) > 0
