"""`slimline profile`: JSON output, --modules, and errors with their exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from slimline.cli import app
from slimline.errors import ModelLoadError


@pytest.fixture
def tiny_dir(tiny_llama_dir):
    return tiny_llama_dir


def test_profile_json(tiny_dir) -> None:
    args = [
        "profile",
        str(tiny_dir),
        "--seq-len",
        "16",
        "--new-tokens",
        "3",
        "--prompt-len",
        "4",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--json",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    m = data["metrics"]
    assert m["params/total"] == 3_219_776
    assert m["latency/prefill_ms"] > 0 and m["latency/decode_tok_s"] > 0
    assert m["size/disk_bytes"] > m["size/bytes"] * 0.99  # fp32 safetensors + tokenizer files
    assert data["env"]["engine"] == "torch eager" and data["env"]["threads"] == 1
    assert data["settings"]["seq_len"] == 16


def test_profile_modules(tiny_dir) -> None:
    r = CliRunner().invoke(app, ["profile", str(tiny_dir), "--modules", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    q = rows["model.layers.0.self_attn.q_proj"]
    assert q["type"] == "Linear" and q["role"] == "attention" and q["in x out"] == "64x64"
    assert rows["lm_head"]["role"] == "lm_head"
    r = CliRunner().invoke(app, ["profile", str(tiny_dir), "--modules"])
    assert r.exit_code == 0 and "mlp.down_proj" in r.output


def test_profile_missing_model_is_a_load_error(tmp_path) -> None:
    r = CliRunner().invoke(app, ["profile", str(tmp_path / "nope")])
    assert isinstance(r.exception, ModelLoadError)
    assert r.exception.exit_code == 2 and r.exception.fix
