"""The evaluation suite judges a model inside the engine that serves it: the GGUF file in
llama.cpp, against its torch original as the reference."""

import json

from typer.testing import CliRunner

from slimline.cli import app
from slimline.engines import load_engine
from slimline.eval import run_suite
from slimline.eval.engine import ServedEngine


def test_suite_in_llamacpp_agrees_with_torch_on_the_same_f32_weights(tiny_bpe, llama_cpp):
    lm = tiny_bpe.small_vocab_model("llama")
    with load_engine("llamacpp", lm, threads=1, n_ctx=256) as eng:
        served = ServedEngine(eng, lm.tokenizer)
        assert served.max_length == 256
        report = run_suite(
            served,
            reference=lm,
            tasks=["tail", "cloze"],
            overrides={"tail": {"windows": 2, "seq_len": 64}},
            limit=8,
        )
    m = report.metrics
    # the same weights in another engine: the tail of the KL stays tiny, next-token argmax flips
    # only on near-ties, and no multiple-choice answer changes
    assert m["kl/max/python-docs"] < 0.05, m
    assert 0 <= m["flip/top1/python-docs"] < 0.02
    cloze = [v for k, v in m.items() if k.startswith("flip/cloze")]
    assert cloze and max(cloze) == 0.0, m


def test_eval_cli_runs_the_suite_in_llamacpp(tiny_bpe, llama_cpp, tmp_path):
    lm = tiny_bpe.small_vocab_model("llama")
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    m = str(tmp_path / "m")
    args = ["eval", m, "--reference", m, "--suite", "default", "--task", "tail", "--limit", "2"]
    res = CliRunner().invoke(app, [*args, "--windows", "2", "--seq-len", "64", "--engine",
                                   "llamacpp", "--n-ctx", "128", "--threads", "1", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["metrics"]["kl/max/python-docs"] < 0.05
