"""The pair on the command line: quantize on a GGUF grid, export bit-exact and verified,
profile in llama.cpp; bad input exits non-zero with one line and leaves no file."""

import json
import sys

import pytest
from typer.testing import CliRunner

from slimline.cli import app
from slimline.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_dir(tiny_bpe, tmp_path_factory):
    lm = tiny_bpe.small_vocab_model("llama")
    d = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def test_quantize_on_grid_then_export_is_exact_and_verified(tiny_dir, tmp_path, llama_cpp):
    art, gg = tmp_path / "art", tmp_path / "m.gguf"
    r = CliRunner().invoke(
        app,
        [
            "quantize",
            str(tiny_dir),
            "--method",
            "gptq",
            "--grid",
            "gguf-q4_0",
            "-o",
            str(art),
            "--calib-samples",
            "8",
            "--seq-len",
            "64",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["scheme"] == "gguf-q4_0"
    r = CliRunner().invoke(app, ["export", str(art), "--format", "gguf", "-o", str(gg), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    blk = [n for n, t in rec["tensor_types"].items() if t == "q4_0"]
    assert len(blk) == 14 and set(blk) <= set(rec["exact"]) and rec["requantized"] == {}
    assert rec["verify"]["verified"] and rec["verify"]["same_weights"]["kl"] < 0.01
    assert json.loads((tmp_path / "m.gguf.json").read_text())["exact"] == rec["exact"]

    r = CliRunner().invoke(
        app,
        [
            "profile",
            str(gg),
            "--engine",
            "llamacpp",
            "--json",
            "--seq-len",
            "16",
            "--new-tokens",
            "4",
            "--prompt-len",
            "4",
            "--repeats",
            "1",
            "--threads",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    prof = json.loads(r.stdout)
    assert prof["env"]["engine"] == "llamacpp" and prof["env"]["version"] == llama_cpp.__version__
    assert prof["metrics"]["latency/decode_tok_s"] > 0 and prof["metrics"]["latency/prefill_ms"] > 0
    assert prof["metrics"]["size/bytes"] == gg.stat().st_size

    r = CliRunner().invoke(
        app, ["export", str(art), "--format", "tflite", "-o", str(tmp_path / "x")]
    )
    assert isinstance(r.exception, ConfigError)


def test_export_of_an_unsupported_family_exits_with_one_line(tmp_path, monkeypatch, capsys):
    import warnings

    from slimline.cli import main
    from slimline.models import tiny_model

    d = tmp_path / "gpt2"
    lm = tiny_model("gpt2")
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    out = tmp_path / "g.gguf"
    # main() as the console script runs it (its exit code and message), in this process
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    for k in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.setenv(k, "error" if k == "TRANSFORMERS_VERBOSITY" else "1")
    monkeypatch.setattr(sys, "argv", ["slimline", "export", str(d), "-o", str(out)])
    capsys.readouterr()  # drop save_pretrained's progress bars
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    lines = lines[next(i for i, ln in enumerate(lines) if ln.startswith("error:")) :]  # no bars
    assert lines[0].startswith(
        "error: GGUF export supports llama, mistral, qwen2, qwen3, phi3, gemma3_text models, "
        "not gpt2"
    )
    assert lines[1].strip().startswith("fix:") and len(lines) == 2
    assert sorted(x.name for x in tmp_path.iterdir()) == ["gpt2"]
