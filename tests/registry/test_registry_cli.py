"""The CLI is a thin layer: JSON listings parse, errors carry the library's error class."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from slimline.cli import app
from slimline.errors import RegistryError

runner = CliRunner()


def _ok(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


def test_registry_cli_round_trip(home, lineage_artifacts):
    _ok(["registry", "register", str(lineage_artifacts["base"].path), "tiny"])
    _ok(["registry", "register", str(lineage_artifacts["child"].path), "tiny"])
    listed = json.loads(_ok(["registry", "list", "--json"]))
    assert [v["ref"] for v in listed] == ["tiny@1", "tiny@2"]
    assert [v["ref"] for v in json.loads(_ok(["registry", "lineage", "tiny@2", "--json"]))] == [
        "tiny@2",
        "tiny@1",
    ]
    _ok(["registry", "gates", "production", "size/bytes <= 500"])
    blocked = runner.invoke(app, ["registry", "promote", "tiny@1", "production", "--json"])
    assert isinstance(blocked.exception, RegistryError) and "blocked" in blocked.exception.problem
    assert json.loads(blocked.output)["promoted"] is False
    assert (
        json.loads(_ok(["registry", "promote", "tiny@2", "production", "--json"]))["promoted"]
        is True
    )
    assert json.loads(_ok(["registry", "verify", "tiny@2", "--json"]))["ok"] is True
    cmp = json.loads(_ok(["compare", "tiny@1", "tiny@2", "--json"]))
    assert cmp["verdict"] == "mixed"
    audit = json.loads(_ok(["registry", "audit", "--json"]))
    assert [a["action"] for a in audit][:3] == ["verify", "promote", "gate_failed"]
    assert (
        json.loads(_ok(["artifact", "verify", str(lineage_artifacts["base"].path), "--json"]))["ok"]
        is True
    )
