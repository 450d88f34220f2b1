"""A recipe whose latency targets hold on llama.cpp: the runner exports the model (its GGUF
grid kept), measures it in llama.cpp beside the baseline, and judges the targets there."""

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
