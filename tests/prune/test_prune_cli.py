"""`slimline prune` end to end on a tiny saved model: outputs load, bad input writes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from slimline.cli import app
from slimline.errors import ConfigError, InputError
from slimline.models import tiny_model


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A private slimline home: the command's run dir and registry entries land there."""
    monkeypatch.setenv("SLIMLINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny") / "llama"
    lm = tiny_model("llama", n_blocks=3, hidden=96, n_heads=6, n_kv_heads=2, intermediate=128)
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(str(d))
    return d


def _run(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


def test_structured_cli_writes_a_smaller_plain_hf_model(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "small"
    r = _run(
        "prune", str(tiny_dir), "--structured", "heads=0.34,mlp=0.25,blocks=1",
        "--calib-samples", "4", "--seq-len", "32", "-o", str(out), "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["format"].startswith("hf")
    m = AutoModelForCausalLM.from_pretrained(out)
    c = m.config
    assert (
        c.num_attention_heads,
        c.num_key_value_heads,
        c.intermediate_size,
        c.num_hidden_layers,
    ) == (4, 2, 96, 2)
    log = json.loads((out / "slimline.json").read_text())  # the edit log is the stage trace
    assert [s["kind"] for s in log["stages"]] == ["prune.heads", "prune.mlp", "prune.blocks"]


def test_unstructured_cli_writes_a_sparse_artifact(tiny_dir, tmp_path):
    from slimline.artifact import load_artifact

    out = tmp_path / "sparse"
    r = _run(
        "prune", str(tiny_dir), "--method", "wanda", "--pattern", "2:4",
        "--calib-samples", "4", "--seq-len", "32", "-o", str(out), "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    model, _, manifest = load_artifact(out)
    assert manifest["stages"][0]["kind"] == "prune.wanda"
    q = model.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "SparseLinear"
    assert float((q.dense_weight() == 0).float().mean()) == pytest.approx(0.5)
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]))


@pytest.mark.parametrize(
    "args,err",
    [
        (["--sparsity", "1.5"], ConfigError),
        (["--pattern", "4:4"], ConfigError),
        (["--structured", "heads=0.25,bogus=1"], ConfigError),
        (["--structured", "blocks=3"], ConfigError),  # = depth
        (["--method", "obs", "--sparsity", "0.5"], ConfigError),
        ([], ConfigError),
    ],
)
def test_bad_cli_input_is_a_clear_error_and_writes_nothing(tiny_dir, tmp_path, args, err):
    out = tmp_path / "never"
    r = _run(
        "prune", str(tiny_dir), *args, "--calib-samples", "2", "--seq-len", "16", "-o", str(out)
    )
    assert isinstance(r.exception, err), r.output
    assert r.exception.fix
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_existing_output_is_refused(tiny_dir, tmp_path):
    r = _run("prune", str(tiny_dir), "--sparsity", "0.5", "-o", str(tmp_path))
    assert isinstance(r.exception, InputError)
