"""The onnxruntime engine: torch, ONNX Runtime and llama.cpp agree on a tiny model; greedy
decoding with the KV cache equals torch's; profile and recipes run on it; a corrupt file fails
with one line naming the problem and the fix."""

import copy
import json
import sys

import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from slimline.cli import app
from slimline.engines import ENGINES, load_engine
from slimline.engines.llamacpp import LlamaCppEngine
from slimline.engines.onnxruntime_engine import OnnxRuntimeEngine
from slimline.errors import ConfigError, EngineError, InputError
from slimline.export import export_gguf
from slimline.export.onnx_export import export_onnx
from slimline.export.verify import compare_logits
from slimline.quant import Rtn, quantize


@pytest.fixture(scope="module")
def tiny(tiny_bpe):
    return tiny_bpe.small_vocab_model("llama")


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    return export_onnx(tiny.model, tiny.tokenizer, tmp_path_factory.mktemp("o") / "t.onnx").path


def _ids(tiny, n=2, t=48):
    return torch.randint(0, len(tiny.tokenizer), (n, t), generator=torch.Generator().manual_seed(0))


def test_torch_onnxruntime_and_llamacpp_agree_on_a_tiny_llama(tiny, tiny_onnx, tmp_path, llama_cpp):
    ids = _ids(tiny)
    gg = export_gguf(tiny.model, tiny.tokenizer, tmp_path / "t.gguf", qtype="f32", verify=False)
    with (
        load_engine("torch", tiny) as te,
        load_engine("onnxruntime", tiny_onnx, threads=1) as oe,
        LlamaCppEngine(gg.path, kv_cache="f32") as le,
    ):
        ref, got, cpp = te.logits(ids), oe.logits(ids), le.logits(ids)
        assert oe.describe() == {
            "engine": "onnxruntime",
            "version": onnxruntime.__version__,
            "threads": 1,
            "family": "llama",
        }
        c = compare_logits(ref, got)
        # measured max |diff| 3e-5 on logits of std 8, KL 5e-12 (fp32 graph, fp32 kernels)
        assert c["max_abs_logit_diff"] < 1e-3 and c["kl"] < 1e-9 and c["agree/top1"] == 1.0
        assert compare_logits(cpp, got)["kl"] < 1e-9  # llama.cpp f32: the same numbers
        prompt = ids[0, :8].tolist()
        assert oe.generate(prompt, 16) == te.generate(prompt, 16) == le.generate(prompt, 16)


def test_kv_cache_steps_give_the_logits_of_the_full_window(tiny, tiny_onnx):
    ids = _ids(tiny, 1, 24)[0].tolist()
    with OnnxRuntimeEngine(tiny_onnx, threads=1) as eng:
        full = eng.window_logits(ids)
        logits, past = eng._run(ids[:16], None)
        assert past["past_key_values.0.key"].shape[2] == 16
        rows = [torch.from_numpy(logits[0])]
        for t in ids[16:]:
            logits, past = eng._run([t], past)
            rows.append(torch.from_numpy(logits[0]))
        assert torch.allclose(torch.cat(rows), full, atol=1e-3)  # measured 1.7e-5


@pytest.mark.parametrize("group,symmetric", [(32, False), (64, True)])
def test_a_4bit_model_decodes_greedily_as_torch(tiny, group, symmetric):
    lm = copy.deepcopy(tiny)
    quantize(lm.model, Rtn(bits=4, group_size=group, symmetric=symmetric))
    with load_engine("torch", lm) as te, load_engine("onnxruntime", lm, threads=1) as oe:
        tmp = oe._owned[0].name
        prompt = _ids(tiny, 1, 12)[0].tolist()
        assert oe.generate(prompt, 24) == te.generate(prompt, 24)
        c = compare_logits(te.logits(_ids(tiny)), oe.logits(_ids(tiny)))
        assert c["agree/top1"] == 1.0 and c["max_abs_logit_diff"] < 1e-3  # measured 3e-5
    import os

    assert not os.path.exists(tmp)  # the temporary export is removed on close


def test_engine_opens_a_directory_holding_model_onnx(tiny, tiny_onnx, tmp_path):
    (tmp_path / "model.onnx").symlink_to(tiny_onnx)
    with load_engine("onnxruntime", tmp_path) as eng:
        assert eng.vocab_size == len(tiny.tokenizer)
    assert "onnxruntime" in ENGINES


def test_profile_cli_runs_on_onnxruntime(tiny_onnx, tiny_llama_dir):
    args = ["--json", "--seq-len", "16", "--new-tokens", "4", "--prompt-len", "4"]
    args += ["--repeats", "1", "--threads", "1"]
    for model in (tiny_onnx, tiny_llama_dir):  # a file, and a model exported on the fly
        r = CliRunner().invoke(app, ["profile", str(model), "--engine", "onnxruntime", *args])
        assert r.exit_code == 0, r.output
        prof = json.loads(r.stdout)
        assert prof["env"]["engine"] == "onnxruntime"
        assert prof["env"]["version"] == onnxruntime.__version__ and prof["env"]["threads"] == 1
        assert prof["metrics"]["latency/decode_tok_s"] > 0
        assert prof["metrics"]["latency/prefill_ms"] > 0
        # at least the tied embedding (>= 400 x 64 fp32), read in full as the head
        assert prof["metrics"]["latency/bytes_per_token"] > 400 * 64 * 4
        assert prof["file"] == (
            str(model) if model == tiny_onnx else "temporary onnxruntime export"
        )


def test_a_recipe_targets_latency_on_onnxruntime(tiny_bpe, tmp_path):
    from slimline.recipe import parse_recipe, run_recipe

    lm = tiny_bpe.small_vocab_model("llama")
    lm.model.save_pretrained(tmp_path / "tiny")
    lm.tokenizer.save_pretrained(tmp_path / "tiny")
    on = {"engine": "onnxruntime", "threads": 1}
    lat = {"prefill_tokens": 16, "decode_tokens": 4, "prompt_tokens": 4, "repeats": 1}
    recipe = parse_recipe(
        {
            "name": "tiny-ort",
            "model": str(tmp_path / "tiny"),
            "stages": [{"quant.rtn": {"bits": 4, "group_size": 32}}],
            "eval": {
                "datasets": ["python-docs"],
                "windows": 1,
                "seq_len": 32,
                "latency": {**on, **lat},
            },
            "targets": {"min_decode_tok_s": {"value": 1.0, **on}},
        }
    )
    res = run_recipe(recipe, tmp_path / "run", register=False, report=False)
    setup = res.final["latency/setup"]
    assert setup["engine"] == "onnxruntime" and setup["engine_version"] == onnxruntime.__version__
    assert {v.target: v.status for v in res.verdicts} == {"min_decode_tok_s": "met"}


def test_a_corrupt_onnx_file_is_one_line_with_the_fix(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage, not a protobuf graph" * 10)
    with pytest.raises(EngineError) as e:
        load_engine("onnxruntime", bad)
    assert str(e.value.problem).startswith(f"ONNX Runtime cannot load {bad}: ")
    assert "\n" not in e.value.problem and "slimline export MODEL --format onnx" in e.value.fix
    with pytest.raises(InputError, match="no ONNX file"):
        load_engine("onnxruntime", tmp_path / "missing.onnx")
    import onnx
    from onnx import helper

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [x])
    g.output[0].name = "y"
    onnx.save(helper.make_model(g), str(tmp_path / "other.onnx"))  # valid, but not ours
    with pytest.raises(EngineError, match="was not written by slimline's ONNX export"):
        load_engine("onnxruntime", tmp_path / "other.onnx")


def test_profile_cli_exits_with_one_line_on_a_corrupt_file(tmp_path, monkeypatch, capsys):
    from slimline.cli import main

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    monkeypatch.setattr(sys, "argv", ["slimline", "profile", str(bad), "--engine", "onnxruntime"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code != 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines[0].startswith(f"error: ONNX Runtime cannot load {bad}")
    assert lines[1].strip().startswith("fix:") and len(lines) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_an_encoder_or_a_gguf_quant_type_is_refused(minilm, tiny):
    with pytest.raises(ConfigError, match="runs causal LMs"):
        load_engine("onnxruntime", minilm)
    with pytest.raises(ConfigError, match="keeps dense weights in f32"):
        load_engine("onnxruntime", tiny, qtype="q4_0")
