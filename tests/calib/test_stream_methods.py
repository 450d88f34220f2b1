"""Every one-shot technique that can stream does (issue 15): on a sharded tiny safetensors
directory the streamed artifact's weights are the in-memory path's bytes and its stage record
is the same record; a technique or setting that needs the whole model is refused before any
work, saying why and what to use instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimline.artifact import save_artifact
from slimline.artifact.atomic import is_partial_output
from slimline.calib.stream import compress_streamed, stream_plan
from slimline.core import Context, apply_technique, make_config
from slimline.errors import ConfigError
from slimline.models import load_model, tiny_model

STAMP = {"created_at": "2026-01-01T00:00:00+00:00"}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMLINE_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("stream_methods") / "llama"
    lm = tiny_model("llama", n_blocks=3, hidden=64, intermediate=128)
    lm.model.save_pretrained(d, max_shard_size="50KB")
    lm.tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 49152, (8, 64), generator=torch.Generator().manual_seed(0))


# test_stream.py covers quant.rtn, quant.gptq, quant.awq, quant.w8a8 (smoothed) and prune.wanda
CASES = [
    ("quant.smoothquant", {}, "engine"),
    ("quant.w8a8", {"smooth_alpha": None}, "walk"),  # dynamic, unsmoothed: needs no data
    ("quant.w8a8", {"act": "static", "smooth_alpha": None}, "engine"),
    ("prune.sparsegpt", {"sparsity": 0.5}, "engine"),
    ("prune.sparsegpt", {"pattern": "2:4"}, "engine"),
    ("prune.magnitude", {"sparsity": 0.5, "scope": "row"}, "walk"),
    ("lowrank.asvd", {"rank_ratio": 0.5}, "engine"),
    ("lowrank.svd", {"rank": 8}, "walk"),
    ("quant.mixed", {"group_size": 32, "avg_bits": 4.5}, "mixed"),  # sensitivity-allocated bits
]


@pytest.mark.parametrize(
    ("kind", "params", "how"), CASES, ids=[f"{k}-{i}" for i, (k, _p, _h) in enumerate(CASES)]
)
def test_streamed_equals_in_memory(sharded, ids, tmp_path, kind, params, how):
    cfg = make_config(kind, params)
    assert stream_plan(cfg) == how
    res = compress_streamed(sharded, cfg, tmp_path / "str", calib=ids, manifest=STAMP)
    lm = load_model(str(sharded))
    rec = apply_technique(lm.model, cfg, Context(calib=ids)).model_dump(mode="json")
    ref = save_artifact(lm, None, tmp_path / "mem", manifest=STAMP)
    a = (tmp_path / "mem" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "str" / "model.safetensors").read_bytes()
    assert res.info.manifest["modules"] == ref.manifest["modules"]
    got = res.record
    for k in ("kind", "params_before", "params_after", "bytes_before", "bytes_after"):
        assert got[k] == rec[k], k
    if kind.startswith("prune."):  # a zero share is counted while the block is in hand: in the
        # details' per-layer record; the module list, made once every block is back on disk,
        # cannot count it (it lists modules whose type or stored bits changed)
        assert got["modules"] == {}
        assert all(v["sparsity"] >= 0.5 for v in got["details"]["layers"].values())
    else:
        assert got["modules"] == rec["modules"]
    drop = {"seconds"}
    assert {k: v for k, v in got["details"].items() if k not in drop} == {
        k: v for k, v in rec["details"].items() if k not in drop
    }
    if kind == "quant.mixed":  # the allocation really mixes widths, so the test can tell
        assert len(set(got["details"]["bits"].values())) > 1
    assert [p.name for p in tmp_path.iterdir() if is_partial_output(p)] == []


@pytest.mark.parametrize(
    ("kind", "params", "why"),
    [
        ("prune.magnitude", {"scope": "global"}, "ranks every layer's weights together"),
        ("quant.mixed", {"metric": "kl"}, "whole model once per layer"),
        ("prune.sparsegpt", {"storage": "sparse"}, "storage: sparse"),
        ("prune.blocks", {"remove": 1}, "changes the model as a whole"),
    ],
)
def test_what_cannot_stream_is_refused_before_work(sharded, ids, tmp_path, kind, params, why):
    cfg = make_config(kind, params)
    with pytest.raises(ConfigError, match=why) as e:
        compress_streamed(sharded, cfg, tmp_path / "out", calib=ids)
    assert "without --stream" in e.value.fix or "use " in e.value.fix
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if is_partial_output(p)] == []
