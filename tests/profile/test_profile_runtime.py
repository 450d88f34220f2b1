"""Runtime profile: every field present and sane (timings are never asserted), roles, energy."""

from __future__ import annotations

import json

import pytest
import torch

from slimline.errors import ConfigError, InputError
from slimline.models import tiny_model
from slimline.profile import Energy, decode_breakdown, module_roles, profile, profile_paired
from slimline.profile.runtime import greedy_decode


def _sane(p, key: str) -> None:
    m = p.metrics
    assert m[f"{key}_min"] <= m[key] <= m[f"{key}_max"]
    assert m[key] > 0


def test_profile_causal_fields_and_order() -> None:
    lm = tiny_model("llama")
    before = torch.get_num_threads()
    p = profile(lm, seq_len=32, new_tokens=6, prompt_len=8, repeats=3, threads=before + 1)
    assert torch.get_num_threads() == before  # the profile's thread count is not left behind
    m = p.metrics
    for key in (
        "params/total",
        "params/nonzero",
        "size/bytes",
        "flops/token",
        "flops/token_decode",
        "latency/prefill_ms",
        "latency/prefill_tok_s",
        "latency/decode_tok_s",
        "latency/generate_tok_s",
        "memory/peak_mb",
        "memory/model_mb",
        "memory/process_peak_mb",
    ):
        assert m[key] > 0, key
    _sane(p, "latency/prefill_ms")
    _sane(p, "latency/decode_tok_s")
    assert len(p.timings["prefill_ms"]) == 3 and len(p.timings["decode_tok_s"]) == 3
    assert m["params/total"] == 3_219_776 and m["size/bytes"] == 4 * 3_219_776
    # The process holds at least the model: its sampled RSS peak is above the model's bytes.
    assert m["memory/peak_mb"] >= m["memory/model_mb"]
    assert p.env["engine"] == "torch eager" and p.env["threads"] == before + 1
    assert p.env["machine"]["cpu"] and p.env["machine"]["cores"] >= 1
    # Breakdown: every role the tiny llama has got time; with a 49k vocab the head dominates.
    roles = p.breakdown["by_role_ms"]
    assert {"attention", "mlp", "norm", "lm_head", "embed"} <= set(roles)
    assert all(v >= 0 for v in roles.values())
    assert "Linear" in p.breakdown["by_type_ms"]
    assert any(k.startswith("model.layers.*.") for k in p.breakdown["by_name_ms"])
    json.loads(p.to_json())  # serialisable
    assert len(p.tables()) == 4


def test_profile_encoder_has_no_decode() -> None:
    p = profile(tiny_model("bert"), seq_len=16, batch=2, repeats=2, threads=1, breakdown=False)
    assert "latency/decode_tok_s" not in p.metrics and p.breakdown is None
    _sane(p, "latency/prefill_ms")
    assert p.metrics["latency/prefill_tok_s"] > 0 and p.env["batch"] == 2


def test_profile_paired_interleaves_models_and_takes_medians_over_rounds() -> None:
    a, b = tiny_model("llama"), tiny_model("llama", n_blocks=1)
    order: list[str] = []
    for name, lm in (("A", a), ("B", b)):
        lm.model.register_forward_hook(lambda *_, n=name: order.append(n))
    pa, pb = profile_paired(
        [a, b], rounds=3, warmup=0, seq_len=16, new_tokens=3, prompt_len=4, threads=1
    )
    runs = [n for i, n in enumerate(order) if i == 0 or order[i - 1] != n]
    assert runs == ["A", "B"] * 3  # one prefill + decode per model per round, A B A B A B
    for p in (pa, pb):
        assert len(p.timings["prefill_ms"]) == 3 and len(p.timings["decode_tok_s"]) == 3
        _sane(p, "latency/prefill_ms")
        assert p.settings["repeats"] == 3 and p.settings["interleaved_models"] == 2
    assert pb.metrics["params/total"] < pa.metrics["params/total"]
    with pytest.raises(ConfigError, match="rounds"):
        profile_paired([a], repeats=2)


def test_decode_breakdown_splits_step_time_into_operator_classes() -> None:
    lm = tiny_model("llama")
    b = decode_breakdown(lm.model, torch.randint(0, 1000, (1, 8)), new_tokens=4)
    assert b["tokens"] == 4 and b["operator_calls_per_token"] > 10
    assert {"matmul", "attention", "outside operators"} <= set(b["share"])
    assert abs(sum(b["share"].values()) - 1) < 0.01
    assert b["ms_per_token"]["matmul"] > 0  # the q/k/v/o, MLP and lm_head GEMMs are found
    assert any(op in b["top_ops_ms"] for op in ("aten::mm", "aten::addmm", "aten::linear"))


def test_greedy_decode_makes_exactly_new_tokens_and_matches_full_forward() -> None:
    lm = tiny_model("llama")
    prompt = torch.randint(5, 1000, (1, 8), generator=torch.Generator().manual_seed(1))
    _, _, ids = greedy_decode(lm.model, prompt, 5)
    assert ids.shape == (1, 5)
    # The cached loop picks the same tokens as recomputing the whole sequence each step.
    seq = prompt
    with torch.no_grad():
        for _ in range(5):
            nxt = lm.model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(seq[:, 8:], ids)


def test_module_roles_cover_each_family() -> None:
    llama = tiny_model("llama")
    r = module_roles(llama.model, llama.arch)
    assert r["model.layers.0.self_attn.q_proj"] == "attention"
    assert r["model.layers.1.mlp.down_proj"] == "mlp"
    assert r["model.layers.0.input_layernorm"] == "norm" and r["model.norm"] == "norm"
    assert r["lm_head"] == "lm_head" and r["model.embed_tokens"] == "embed"
    bert = tiny_model("bert")
    r = module_roles(bert.model, bert.arch)
    assert r["encoder.layer.0.attention.output.dense"] == "attention"
    assert r["encoder.layer.0.attention.output.LayerNorm"] == "norm"
    assert r["encoder.layer.0.intermediate.dense"] == "mlp"
    assert r["encoder.layer.0.output.dense"] == "mlp"
    assert r["embeddings.word_embeddings"] == "embed"
    assert r["embeddings.position_embeddings"] == "position"


def test_energy_not_available_is_reported_not_invented(tmp_path) -> None:
    e = Energy(str(tmp_path / "intel-rapl:*" / "energy_uj"))
    assert not e.available and "no RAPL" in e.reason
    p = profile(
        tiny_model("llama"),
        seq_len=8,
        new_tokens=2,
        prompt_len=4,
        repeats=1,
        threads=1,
        breakdown=False,
    )
    if not p.energy["available"]:  # this VM has no RAPL: nothing named energy/ is reported
        assert p.energy["reason"]
        assert not any(k.startswith("energy/") for k in p.metrics)


def test_energy_reads_rapl_counters_with_wraparound(tmp_path) -> None:
    dom = tmp_path / "intel-rapl:0"
    dom.mkdir()
    sub = tmp_path / "intel-rapl:0:0"  # a sub-domain: must not be double counted
    sub.mkdir()
    (dom / "energy_uj").write_text("999000000\n")
    (dom / "max_energy_range_uj").write_text("1000000000\n")
    (sub / "energy_uj").write_text("5\n")
    e = Energy(str(tmp_path / "intel-rapl:*" / "energy_uj"))
    assert e.available and len(e.files) == 1

    def work() -> None:  # the counter wraps: 999 J -> 1000 J (range) -> 2.5 J
        (dom / "energy_uj").write_text("2500000\n")

    assert e.measure(work) == pytest.approx(3.5)


def test_profile_bad_input() -> None:
    lm = tiny_model("llama")
    with pytest.raises(ConfigError, match="repeats"):
        profile(lm, repeats=0)
    # Longer than the model's window: measured at the longest length it allows, and said so.
    with pytest.warns(UserWarning, match="at most 1024 positions"):
        p = profile(lm, seq_len=4096, new_tokens=8, prompt_len=1020, repeats=1, breakdown=False)
    assert (p.settings["seq_len"], p.settings["new_tokens"], p.settings["prompt_len"]) == (
        1024,
        4,
        1020,
    )
    assert p.settings["fitted_to_model"]["seq_len"] == {"asked": 4096, "used": 1024}
    with pytest.raises(InputError, match="cannot measure"):
        profile(42)
