"""Streamed one-shot compression (issue 15): a safetensors directory read, compressed and written
one block at a time gives the very bytes the in-memory path writes, holds one block at a time,
and refuses bad input (a missing shard, a dtype it does not read, a full disk) leaving nothing
behind and the same call runnable again."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from slimline.artifact import load_artifact, save_artifact
from slimline.artifact.atomic import is_partial_output
from slimline.artifact.io import write_safetensors
from slimline.calib import run_blocks
from slimline.calib.stream import BlockSource, compress_streamed
from slimline.core import Context, apply_technique
from slimline.errors import ConfigError, InputError, ModelLoadError
from slimline.models import load_model, tiny_model
from slimline.prune import Wanda
from slimline.quant.awq import Awq
from slimline.quant.gptq import Gptq
from slimline.quant.rtn import Rtn
from slimline.quant.smoothquant import W8A8

STAMP = {"created_at": "2026-01-01T00:00:00+00:00"}  # the one manifest field that is a clock


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMLINE_HOME", str(tmp_path / "home"))


def _save(d: Path, dtype: torch.dtype = torch.float32, shard: str | None = "50KB") -> Path:
    lm = tiny_model("llama", n_blocks=3, hidden=64, intermediate=128)
    lm.model.to(dtype).save_pretrained(d, **({"max_shard_size": shard} if shard else {}))
    lm.tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("stream") / "llama")


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 49152, (8, 64), generator=torch.Generator().manual_seed(0))


def _in_memory(src: Path, cfg, ids, out: Path):
    lm = load_model(str(src))
    apply_technique(lm.model, cfg, Context(calib=ids))
    return save_artifact(lm, None, out, manifest=STAMP)


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if is_partial_output(p)]


@pytest.mark.parametrize(
    "cfg",
    [
        Rtn(bits=4, group_size=32),
        Gptq(bits=4, group_size=32),
        Awq(bits=4, group_size=32),
        W8A8(smooth_alpha=0.5),
        Wanda(sparsity=0.5),  # SparseGPT shares Wanda's block glue (prune.oneshot._blockwise)
    ],
    ids=lambda c: c.kind,
)
def test_streamed_artifact_is_byte_identical(sharded, ids, tmp_path, cfg):
    assert len(list(sharded.glob("model-*.safetensors"))) > 3  # really sharded
    ref = _in_memory(sharded, cfg, ids, tmp_path / "mem")
    res = compress_streamed(sharded, cfg, tmp_path / "str", calib=ids, manifest=STAMP)
    a = (tmp_path / "mem" / "model.safetensors").read_bytes()
    b = (tmp_path / "str" / "model.safetensors").read_bytes()
    assert a == b
    for k in ("modules", "tied", "reshaped", "files", "kind", "tokenizer_class"):
        assert res.info.manifest[k] == ref.manifest[k], k
    rec = res.info.manifest["stream"]
    assert rec["streamed"] is True and rec["peak_rss_mb"] > 0
    assert (rec["activation_peak_mb"] > 0) == ("calib" in cfg.requires())  # RTN runs no data
    assert res.info.manifest["stages"][0]["kind"] == cfg.kind
    model, _tok, _m = load_artifact(tmp_path / "str")
    assert torch.isfinite(model(ids[:1]).logits).all()
    assert _leftovers(tmp_path) == []


def test_half_precision_single_file(tmp_path, ids):
    """bf16 on disk, one file: read as float32 exactly as load_model does."""
    src = _save(tmp_path / "bf16", torch.bfloat16, shard=None)
    assert (src / "model.safetensors").exists()
    _in_memory(src, Gptq(bits=4, group_size=32), ids, tmp_path / "mem")
    compress_streamed(src, Gptq(bits=4, group_size=32), tmp_path / "str", calib=ids, manifest=STAMP)
    a = (tmp_path / "mem" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "str" / "model.safetensors").read_bytes()


def test_one_block_in_memory_at_a_time(sharded, ids, tmp_path):
    """While block i is compressed every other block is on the meta device; after the run the
    whole model is back there (nothing read from disk stays referenced)."""
    from slimline.artifact.stream import ArtifactStream
    from slimline.models.lazy import open_lazy

    lazy = open_lazy(sharded)
    blocks = lazy.arch.blocks(lazy.model)
    seen = []

    def on_block(step):
        real = [
            i for i, b in enumerate(blocks) if any(p.device.type != "meta" for p in b.parameters())
        ]
        seen.append(real)
        emb = lazy.model.get_submodule(lazy.arch.embed).weight
        assert emb.device.type == "meta"  # the stem was written and released after capture

    with ArtifactStream(lazy.model, lazy.tokenizer, tmp_path / "o") as w:
        src = BlockSource(lazy, w)
        lazy.model._slimline_stream = src
        run_blocks(lazy.model, ids, on_block, batch_size=2)
        src.finish()
        w.commit()
    assert seen == [[0], [1], [2]]
    left = [n for n, p in lazy.model.named_parameters() if p.device.type != "meta"]
    assert left == []


def test_missing_shard_is_named(tmp_path, ids):
    src = _save(tmp_path / "m")
    victim = sorted(src.glob("model-*.safetensors"))[2]
    victim.unlink()
    with pytest.raises(ModelLoadError, match=f"lacks shard {victim.name}"):
        compress_streamed(src, Rtn(bits=4, group_size=32), tmp_path / "out", calib=ids)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_an_artifact_is_not_streamed(sharded, ids, tmp_path):
    compress_streamed(sharded, Rtn(bits=4, group_size=32), tmp_path / "a", calib=ids)
    with pytest.raises(ModelLoadError, match="is a slimline artifact"):
        compress_streamed(tmp_path / "a", Rtn(bits=4, group_size=32), tmp_path / "b", calib=ids)
    assert not (tmp_path / "b").exists()


def test_unsupported_dtype_is_refused(tmp_path, ids):
    from safetensors.torch import load_file, save_file

    src = _save(tmp_path / "d", shard=None)
    t = load_file(src / "model.safetensors")
    t["model.norm.weight"] = t["model.norm.weight"].double()
    save_file(t, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"model.norm.weight is F64.*reads F32, F16, BF16"):
        compress_streamed(src, Rtn(bits=4, group_size=32), tmp_path / "out", calib=ids)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["spill", "assemble"])
def test_disk_full_leaves_nothing_and_reruns(sharded, ids, tmp_path, monkeypatch, where):
    import safetensors.torch

    import slimline.artifact.stream as st

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "spill":  # the third block's spill write fails
        real = safetensors.torch.save_file
        calls = []

        def save_file(*a, **k):
            calls.append(1)
            return full() if len(calls) == 3 else real(*a, **k)

        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    else:
        monkeypatch.setattr(st, "write_safetensors", full)
    cfg = Gptq(bits=4, group_size=32)
    with pytest.raises(InputError, match=r"ran out of space.*nothing was written") as e:
        compress_streamed(sharded, cfg, tmp_path / "out", calib=ids, manifest=STAMP)
    assert "run the same command again" in e.value.fix
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()
    compress_streamed(sharded, cfg, tmp_path / "out", calib=ids, manifest=STAMP)
    _in_memory(sharded, cfg, ids, tmp_path / "mem")
    a = (tmp_path / "mem" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "out" / "model.safetensors").read_bytes()


def test_method_that_cannot_stream_is_refused(sharded, ids, tmp_path):
    with pytest.raises(ConfigError, match=r"storage: sparse converts every pruned layer"):
        compress_streamed(
            sharded, Wanda(sparsity=0.5, storage="sparse"), tmp_path / "out", calib=ids
        )
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_safetensors_writer_matches_the_library(tmp_path):
    """Our header (used by both save paths) is the one safetensors writes: dtype rank, then name,
    offsets, padding. (With one metadata key: the library writes its map in hash order.)"""
    from safetensors.torch import save_file

    dtypes = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.float16, torch.bfloat16]
    dtypes += [torch.int32, torch.float32, torch.float64, torch.int64]
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"{'zyxwvutsrq'[i]}.t{i % 3}": (torch.randn(3, i + 1, generator=g) * 9).to(d)
        for i, d in enumerate(dtypes)
    }
    tensors["scalar"] = torch.tensor(1.5)
    save_file(tensors, tmp_path / "lib.safetensors", metadata={"format": "pt"})
    entries = {k: (k2, list(t.shape), t.numel() * t.element_size()) for k, t in tensors.items()
               for k2 in [{torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8",
                           torch.int16: "I16", torch.float16: "F16", torch.bfloat16: "BF16",
                           torch.int32: "I32", torch.float32: "F32", torch.float64: "F64",
                           torch.int64: "I64"}[t.dtype]]}  # fmt: skip
    write_safetensors(
        tmp_path / "ours.safetensors",
        entries,
        lambda k: [tensors[k].reshape(-1).contiguous().view(torch.uint8).numpy()],
        {"format": "pt"},
    )
    assert (tmp_path / "ours.safetensors").read_bytes() == (
        tmp_path / "lib.safetensors"
    ).read_bytes()


def test_cli_stream(sharded, tmp_path):
    from slimline.cli import app

    out = tmp_path / "q"
    r = CliRunner().invoke(
        app,
        ["quantize", str(sharded), "--stream", "--method", "rtn", "--bits", "4", "--group-size",
         "32", "-o", str(out), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{") :])
    assert res["streamed"] is True and res["peak_rss_mb"] > 0 and res["scheme"] == "w4g32"
    assert json.loads((out / "slimline.json").read_text())["stream"]["streamed"] is True


def test_streamed_with_bounded_activations(sharded, ids, tmp_path):
    """Weights from disk block by block and activations through disk beyond 64 KiB: same bytes."""
    cfg = Gptq(bits=4, group_size=32, batch_size=4)
    _in_memory(sharded, cfg, ids, tmp_path / "mem")
    res = compress_streamed(
        sharded, cfg, tmp_path / "str", calib=ids, manifest=STAMP, activation_limit_mb=1 / 16
    )
    a = (tmp_path / "mem" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "str" / "model.safetensors").read_bytes()
    s = res.info.manifest["stream"]
    assert s["activation_limit_mb"] == 1 / 16 and s["activation_peak_mb"] <= 1 / 16
    assert s["activation_spilled_mb"] > 0


def test_cli_stream_takes_a_bundled_name_and_an_activation_limit(sharded, tmp_path, monkeypatch):
    """`quantize NAME --stream` streams the bundled model's converted directory through the
    recipe runner (registered like any run), and `--activation-limit-mb` sends activations
    beyond the limit through disk."""
    import slimline.models.bundled as bundled
    from slimline.cli import app

    monkeypatch.setitem(bundled.BUNDLED, "tiny-sharded", bundled.BUNDLED["smollm2-135m"])
    monkeypatch.setattr(bundled, "bundled_path", lambda name: sharded)
    monkeypatch.setenv("SLIMLINE_HOME", str(tmp_path / "home"))
    out = tmp_path / "q"
    r = CliRunner().invoke(
        app,
        ["quantize", "tiny-sharded", "--stream", "--method", "gptq", "--bits", "4",
         "--group-size", "32", "--calib-samples", "8", "--seq-len", "64",
         "--activation-limit-mb", "0.01", "-o", str(out), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{") :])
    assert res["streamed"] is True and res["registered"]
    assert res["activation_limit_mb"] == 0.01 and res["activation_spilled_mb"] > 0
    assert res["activation_peak_mb"] <= 0.01
    manifest = json.loads((out / "slimline.json").read_text())
    assert manifest["stream"]["activation_spilled_mb"] == res["activation_spilled_mb"]
