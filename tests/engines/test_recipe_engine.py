"""A recipe whose latency targets hold on llama.cpp: the runner exports the model (its GGUF
grid kept), measures it in llama.cpp beside the baseline, and judges the targets there."""

import pytest

from slimline.recipe import parse_recipe, run_recipe


def test_recipe_targets_are_measured_in_llamacpp(tiny_bpe, tmp_path, llama_cpp):
    lm = tiny_bpe.small_vocab_model("llama")
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    on_llama = {"engine": "llamacpp", "threads": 1}
    recipe = parse_recipe(
        {
            "name": "tiny-llamacpp",
            "model": str(model_dir),
            "stages": [{"quant.rtn": {"grid": "gguf-q4_0"}}],
            "eval": {
                "datasets": ["python-docs"],
                "windows": 2,
                "seq_len": 64,
                "latency": {
                    **on_llama,
                    "prefill_tokens": 32,
                    "decode_tokens": 4,
                    "prompt_tokens": 8,
                    "repeats": 1,
                },
            },
            "targets": {
                "min_decode_tok_s": {"value": 1.0, **on_llama},
                "max_prefill_ms": {"value": 60_000, **on_llama},
            },
        }
    )
    res = run_recipe(recipe, tmp_path / "run", register=False, report=False)
    setup = res.final["latency/setup"]
    assert setup["engine"] == "llamacpp" and setup["engine_version"] == llama_cpp.__version__
    assert setup["paired_with_baseline"] is True
    assert {v.target: v.status for v in res.verdicts} == {
        "min_decode_tok_s": "met",
        "max_prefill_ms": "met",
    }
    assert res.final["latency/decode_tok_s"] > 1.0
    base = res.baseline["metrics"]
    assert (
        res.final["memory/model_mb"] < 0.5 * base["memory/model_mb"]
    )  # a q4_0 file vs the f32 baseline


def test_recipe_exports_gguf_as_verified_child_and_times_two_engines(tiny_bpe, tmp_path, llama_cpp):
    """``export: [{format: gguf}]``: the final artifact's GGUF is verified in llama.cpp, its
    quality measured there beside the baseline's f32 file, and it is registered as the
    artifact's child; latency listed on two engines is timed on both, targets read their own."""
    from slimline.artifact import verify_artifact
    from slimline.artifact.io import load_artifact
    from slimline.errors import ConfigError
    from slimline.registry import Registry

    lm = tiny_bpe.small_vocab_model("llama")
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    timing = {"prefill_tokens": 32, "decode_tokens": 4, "prompt_tokens": 8, "repeats": 1}
    recipe = parse_recipe(
        {
            "name": "tiny-export",
            "model": str(model_dir),
            "stages": [{"quant.rtn": {"grid": "gguf-q4_0"}}],
            "eval": {
                "datasets": ["python-docs"],
                "windows": 2,
                "seq_len": 64,
                "latency": [
                    {"engine": "llamacpp", "threads": 1, **timing},
                    {"engine": "torch", "threads": 1, **timing},
                ],
            },
            "targets": {
                "min_decode_tok_s": {"value": 1.0, "engine": "llamacpp", "threads": 1},
                "max_prefill_ms": {"value": 60_000, "engine": "torch", "threads": 1},
                "max_quality_loss": {"ppl/python-docs@llamacpp": 3.0},
            },
            "export": [{"format": "gguf", "threads": 1}],
        }
    )
    home = tmp_path / "home"
    res = run_recipe(recipe, tmp_path / "run", registry_home=home)
    card = res.card.read_text()
    assert "| `exports/gguf/model.gguf` | `llamacpp`" in card and "| `llama-cpp-python`" not in card
    assert "`torch`" in card and "read bandwidth" in card
    assert res.final["latency/setup"]["engine"] == "llamacpp"
    assert res.final["latency/setup@torch"]["engine"] == "torch"
    assert res.final["latency/decode_of_bound"] > 0  # the bandwidth bound sits beside decode
    assert {v.target: v.status for v in res.verdicts} == {
        "min_decode_tok_s": "met",
        "max_prefill_ms": "met",
        "max_quality_loss[ppl/python-docs@llamacpp]": "met",
    }

    (exp,) = res.extra["exports"]
    assert exp["verify"]["verified"] and exp["verify"]["agree/top1"] >= 0.8
    assert exp["type_counts"]["q4_0"] > 0
    q, base = exp["metrics"], exp["baseline_metrics"]
    assert q["ppl/python-docs/vs_baseline"] == q["ppl/python-docs"] / base["ppl/python-docs"]
    assert q["kl/teacher"] >= 0 and 0 <= q["agree/top1"] <= 1
    child = res.run_dir / exp["path"]
    assert verify_artifact(child, home=home).ok
    reg = Registry(home)
    version = reg.get(res.registered["exports"]["gguf"]["ref"])
    assert [v.name for v in reg.lineage(version.ref)] == [
        "tiny-export-gguf",
        "tiny-export",
        "tiny-export-baseline",
    ]
    with pytest.raises(ConfigError, match="gguf export"):
        load_artifact(child, home=home)

    again = run_recipe(recipe, tmp_path / "run", registry_home=home, register=False, report=False)
    # a resumed run re-seals the artifact (a new digest): its export follows it, as its child
    assert again.extra["exports"][0]["parent"] == again.digest != res.digest


def test_recipe_refuses_engine_quality_target_without_that_export(tmp_path):
    from slimline.errors import ConfigError

    with pytest.raises(ConfigError, match="never measures"):
        parse_recipe(
            {
                "name": "no-export",
                "model": "smollm2-135m",
                "targets": {"max_quality_loss": {"ppl/python-docs@llamacpp": 1.2}},
            }
        )
    with pytest.raises(ConfigError, match="unknown export format"):
        parse_recipe({"name": "x", "model": "smollm2-135m", "export": [{"format": "tflite"}]})


def test_recipe_exports_onnx_with_matmulnbits_as_verified_child(tiny_bpe, tmp_path):
    """``export: [{format: onnx}]``: our 4-bit grid becomes MatMulNBits in an ONNX graph that ONNX
    Runtime runs; its quality there is a target, and the file is the artifact's child."""
    from slimline.artifact import verify_artifact
    from slimline.registry import Registry

    lm = tiny_bpe.small_vocab_model("llama")
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    recipe = parse_recipe(
        {
            "name": "tiny-onnx",
            "model": str(model_dir),
            "stages": [{"quant.rtn": {"bits": 4, "group_size": 32, "symmetric": False}}],
            "eval": {"datasets": ["python-docs"], "windows": 2, "seq_len": 64, "latency": None},
            "targets": {"max_quality_loss": {"ppl/python-docs@onnxruntime": 3.0}},
            "export": [{"format": "onnx", "threads": 1}],
        }
    )
    home = tmp_path / "home"
    res = run_recipe(recipe, tmp_path / "run", registry_home=home, report=False)
    (exp,) = res.extra["exports"]
    assert exp["engine"]["engine"] == "onnxruntime" and exp["verify"]["verified"]
    assert exp["verify"]["kl"] < 1e-4  # the same weights in ORT and torch
    # quality in ORT is the torch model's quality: the grid went over exactly
    assert abs(exp["metrics"]["ppl/python-docs"] / res.final["ppl/python-docs"] - 1) < 1e-3
    assert {v.target: v.status for v in res.verdicts} == {
        "max_quality_loss[ppl/python-docs@onnxruntime]": "met"
    }
    assert verify_artifact(res.run_dir / exp["path"], home=home).ok
    reg = Registry(home)
    child = reg.get(res.registered["exports"]["onnx"]["ref"])
    assert [v.name for v in reg.lineage(child.ref)][:2] == ["tiny-onnx-onnx", "tiny-onnx"]
