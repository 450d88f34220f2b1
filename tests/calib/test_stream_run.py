"""`slimline run` streamed (issue 15): a recipe on a safetensors directory with one streamable
stage, run with ``stream: true``, writes the same baseline and artifact bytes as the in-memory
run and measures the same quality (block-streamed: never both models whole); streaming is
chosen automatically above the memory threshold; what it cannot do is refused before work."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimline.errors import ConfigError
from slimline.models import tiny_model
from slimline.recipe import streamed
from slimline.recipe.runner import run_recipe
from slimline.recipe.schema import parse_recipe


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMLINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("stream_run") / "llama"
    lm = tiny_model("llama", n_blocks=3, hidden=64, intermediate=128)
    lm.model.save_pretrained(d, max_shard_size="50KB")
    lm.tokenizer.save_pretrained(str(d))
    return d


def _recipe(model_dir: Path, stream: bool | None, stages=None, latency=None, **extra):
    return parse_recipe(
        {
            "name": "tiny-stream",
            "model": str(model_dir),
            "data": {"calibration": {"n": 8, "seq_len": 64}},
            "stages": stages or [{"quant.gptq": {"bits": 4, "group_size": 32}}],
            "eval": {
                "datasets": ["python-docs", "shakespeare"],
                "windows": 3,
                "seq_len": 64,
                "metrics": ["ppl", "kl/teacher", "agree/top1", "ece"],
                "latency": latency,
            },
            "targets": {"max_quality_loss": {"ppl/python-docs": 1.5}},
            **({"stream": stream} if stream is not None else {}),
            **extra,
        }
    )


def test_streamed_run_matches_in_memory_run(model_dir, tmp_path, home, monkeypatch):
    from slimline.models import load_model
    from slimline.registry import Registry

    held = []  # every full model load_model builds in the streamed run (there must be none)
    mem = run_recipe(_recipe(model_dir, False), tmp_path / "mem", report=False)
    monkeypatch.setattr(
        "slimline.models.load_model", lambda *a, **k: held.append(a) or load_model(*a, **k)
    )
    st = run_recipe(_recipe(model_dir, True), tmp_path / "str", report=False)
    assert held == [] and st.extra["streamed"] is True
    for part in ("baseline", "artifact"):
        a = (tmp_path / "mem" / part / "model.safetensors").read_bytes()
        assert a == (tmp_path / "str" / part / "model.safetensors").read_bytes(), part
    assert st.baseline["digest"] == mem.baseline["digest"]  # one baseline in the registry
    m, s = mem.final, st.final
    keys = [k for k in m if k.split("/")[0] in ("ppl", "kl", "agree", "ece", "params", "bpb")]
    assert {"ppl/python-docs", "kl/teacher", "agree/top1", "ece", "params/total"} <= set(keys)
    for k in keys:
        # measured: equal to ~1e-6 relative (the same float32 ops, batched by window)
        assert s[k] == pytest.approx(m[k], rel=1e-4, abs=1e-6), k
    assert s["kl/teacher"] > 0 and s["agree/top1"] < 1  # it compared two different models
    # same weights file; the manifests differ by the streamed run's memory record only
    assert abs(s["size/bytes"] - m["size/bytes"]) < 2000
    for k, v in mem.baseline["metrics"].items():
        if k.split("/")[0] in ("ppl", "params", "ece"):
            assert st.baseline["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert [v.met for v in st.verdicts] == [v.met for v in mem.verdicts]
    rows = Registry(home).list()  # each run registered its baseline and its artifact
    assert sorted(r.name for r in rows) == ["tiny-stream"] * 2 + ["tiny-stream-baseline"] * 2
    assert len({r.digest for r in rows if r.name == "tiny-stream-baseline"}) == 1
    assert Registry(home).get(st.registered["ref"]).digest == st.digest
    state = (tmp_path / "str" / "run.json").read_text()
    assert '"streamed": true' in state


def test_auto_streams_above_the_memory_threshold(model_dir, tmp_path, monkeypatch):
    r = _recipe(model_dir, None)
    assert "stream" not in r.to_dict()  # absent stays absent: older digests unchanged
    assert r.work_digest() == _recipe(model_dir, True).work_digest()
    assert streamed.wants_stream(r) is False  # 13 MB twice fits
    monkeypatch.setattr(streamed, "AUTO_SHARE", 1e-9)
    assert streamed.wants_stream(r) is True
    # too large but not streamable (two stages): the in-memory runner is used
    two = _recipe(model_dir, None, [{"prune.wanda": {}}, {"quant.rtn": {}}])
    assert streamed.wants_stream(two) is False


@pytest.mark.parametrize(
    ("stages", "extra", "why"),
    [
        ([{"prune.wanda": {}}, {"quant.rtn": {}}], {}, "one stage"),
        ([{"prune.blocks": {"remove": 1}}], {}, "changes the model as a whole"),
        (None, {"targets": {"min_decode_tok_s": 5}, "latency": {}}, "does not time the model"),
    ],
)
def test_what_a_streamed_run_cannot_do_is_refused(model_dir, tmp_path, stages, extra, why):
    r = _recipe(model_dir, True, stages, **extra)
    with pytest.raises(ConfigError, match=why):
        run_recipe(r, tmp_path / "run", report=False)
    assert not (tmp_path / "run").exists()


def test_stream_true_needs_a_weights_directory(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    r = parse_recipe({"name": "x", "model": str(gguf), "stream": True,
                      "stages": [{"quant.rtn": {}}]})  # fmt: skip
    with pytest.raises(ConfigError, match="directory of safetensors"):
        streamed.wants_stream(r)
