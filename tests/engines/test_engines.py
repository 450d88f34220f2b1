"""Engines: torch and llama.cpp agree on tiny models; exports are verified in llama.cpp; bad
input (a corrupt file, a missing engine, a wrong conversion) fails with one clear line."""

import copy
import json
import sys

import pytest
import torch

from slimline.engines import load_engine
from slimline.engines.llamacpp import LlamaCppEngine
from slimline.errors import ConfigError, EngineError, IntegrityError
from slimline.export import export_gguf
from slimline.export.verify import compare_logits
from slimline.quant import Rtn, quantize


@pytest.fixture(scope="module")
def tiny(tiny_bpe):
    return tiny_bpe.small_vocab_model("llama")


@pytest.fixture(scope="module")
def f32_file(tiny, tmp_path_factory, llama_cpp):
    path = tmp_path_factory.mktemp("f32") / "tiny.gguf"
    return export_gguf(tiny.model, tiny.tokenizer, path, qtype="f32", verify=False).path


def test_torch_and_llamacpp_logits_agree_on_an_f32_tiny_llama(tiny, f32_file):
    ids = torch.randint(0, len(tiny.tokenizer), (2, 48), generator=torch.Generator().manual_seed(0))
    with load_engine("torch", tiny) as te, LlamaCppEngine(f32_file, kv_cache="f32") as le:
        ref, got = te.logits(ids), le.logits(ids)
        assert le.describe()["engine"] == "llamacpp" and le.describe()["version"]
        c = compare_logits(ref, got)
        # measured: max |diff| 4e-5 on logits of std 8, KL 8e-12 (with llama.cpp's default f16
        # KV cache: 0.06 and 6e-6 — the cache's rounding, see the export tolerance)
        assert c["max_abs_logit_diff"] < 1e-3 and c["kl"] < 1e-9 and c["agree/top1"] == 1.0
        prompt = ids[0, :8].tolist()
        assert te.generate(prompt, 12) == le.generate(prompt, 12)


@pytest.mark.parametrize("grid", ["gguf-q8_0", "gguf-q5_0", "gguf-q5_1", "gguf-q4_0", "gguf-q4_1"])
def test_grid_export_is_verified_in_llamacpp(tiny, tmp_path, grid, llama_cpp):
    lm = copy.deepcopy(tiny)
    quantize(lm.model, Rtn(grid=grid))
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "m.gguf")
    v = res.record["verify"]
    assert v["verified"] and v["engine"]["engine"] == "llamacpp"
    assert v["engine"]["version"] == llama_cpp.__version__
    # measured KL 3.8e-3 / 4.5e-3 / 4.1e-3, top-1 >= 0.945 (f32 file: 4e-6): llama.cpp rounds
    # activations to 8 bits in its quantized dot products; a wrong conversion gives KL ~11
    assert v["same_weights"]["kl"] < 0.01
    assert v["same_weights"]["agree/top1"] >= 0.9
    ppl = v["ppl/python-docs"]
    assert abs(ppl["llamacpp"] / ppl["torch_file_weights"] - 1) < 0.05
    side = json.loads((tmp_path / "m.gguf.json").read_text())
    assert side["verify"]["same_weights"]["kl"] == v["same_weights"]["kl"]


def test_qwen2_exports_with_biases_and_runs_in_llamacpp(tiny_bpe, tmp_path, llama_cpp):
    lm = tiny_bpe.small_vocab_model("qwen2")
    assert lm.model.model.layers[0].self_attn.q_proj.bias is not None
    quantize(lm.model, Rtn(grid="gguf-q8_0"))
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "q.gguf")
    assert res.record["architecture"] == "qwen2"
    assert res.record["tensor_types"]["blk.0.attn_q.bias"] == "f32"
    assert res.record["tensor_types"]["output.weight"] == "q8_0"  # untied head, as llama.cpp
    assert res.record["verify"]["same_weights"]["kl"] < 0.01  # measured 4e-4


def test_a_wrong_conversion_fails_verification_and_writes_nothing(
    tiny, tmp_path, monkeypatch, llama_cpp
):
    from slimline.export import gguf_export

    monkeypatch.setattr(gguf_export, "_permute_qk", lambda w, n: w)  # rotary layout not converted
    with pytest.raises(IntegrityError, match="differ from torch holding the same weights"):
        export_gguf(tiny.model, tiny.tokenizer, tmp_path / "bad.gguf", qtype="f32")
    assert not list(tmp_path.iterdir())


def test_corrupt_and_foreign_files_are_refused_by_the_engine(f32_file, tmp_path, llama_cpp):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(f32_file.read_bytes()[:4096])
    with pytest.raises(EngineError, match=r"llama\.cpp cannot load .*cut\.gguf"):
        LlamaCppEngine(cut)
    other = tmp_path / "model.gguf"
    other.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(EngineError, match="not a GGUF file"):
        LlamaCppEngine(other)


def test_missing_engine_names_engine_and_install_command(monkeypatch, f32_file):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(EngineError) as e:
        load_engine("llamacpp", f32_file)
    assert "llamacpp engine is not installed" in e.value.problem
    assert "pip install llama-cpp-python" in e.value.fix
    with pytest.raises(ConfigError, match="unknown engine"):
        load_engine("tensorrt", f32_file)


def test_measure_reports_the_protocol_with_engine_version_and_threads(tiny, f32_file):
    for eng in (
        load_engine("torch", tiny, threads=1),
        load_engine("llamacpp", f32_file, threads=1),
    ):
        with eng:
            m = eng.measure(seq_len=32, prompt_len=4, new_tokens=4, repeats=2, warmup=1)
        assert m["env"]["engine"] == eng.name and m["env"]["threads"] == 1 and m["env"]["version"]
        assert m["metrics"]["latency/prefill_ms"] > 0 and m["metrics"]["latency/decode_tok_s"] > 0
        assert m["metrics"]["memory/peak_mb"] > 0 and len(m["timings"]["prefill_ms"]) == 2


def test_engine_from_a_torch_model_exports_verifies_and_cleans_up(tiny, llama_cpp):
    eng = load_engine("llamacpp", tiny)
    path = eng.path
    assert path.exists()
    ids = torch.randint(0, len(tiny.tokenizer), (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = tiny.model(ids).logits
    assert compare_logits(ref, eng.logits(ids))["kl"] < 1e-4  # f32 file, f16 KV cache: ~5e-6
    eng.close()
    assert not path.exists()


@pytest.mark.parametrize("grid", ["gguf-q6_k", "gguf-q5_k", "gguf-q4_k"])
def test_k_quant_export_is_verified_in_llamacpp(tiny_bpe, tmp_path, grid, llama_cpp):
    lm = tiny_bpe.small_vocab_model("llama", hidden=256)
    quantize(lm.model, Rtn(grid=grid))
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "k.gguf")
    assert res.record["type_counts"][grid.removeprefix("gguf-")] == 14
    assert len([n for n in res.record["exact"] if n.startswith("blk.")]) == 14
    # measured 5.5e-3 (q6_k), 5.9e-3 (q5_k), 6.7e-3 (q4_k): 8-bit activations, wider logits
    assert res.record["verify"]["same_weights"]["kl"] < 0.015
