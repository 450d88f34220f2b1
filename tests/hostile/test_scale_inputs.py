"""Hostile input at scale (issue 15), through the command a user runs: a sharded directory whose
index names a shard that is not there, a dense checkpoint holding a dtype nothing here reads
(float8, int8), and a disk that fills up in the middle of writing the weights (simulated: the
weights writer raises ENOSPC after N bytes, leaving a real half-written file in the temp dir).
Each ends in one error line naming the problem and a fix, exit code non-zero, nothing
half-written at the output, and — for the full disk — the same command run again, with space,
completes (a streamed recipe run resumes from its finished baseline)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from slimline.artifact.atomic import is_partial_output

RTN = ["--method", "rtn", "--bits", "4", "--group-size", "32"]  # no data to load: fast


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMLINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _save(d: Path, shard: str | None = "50KB") -> Path:
    from slimline.models import tiny_model

    lm = tiny_model("llama", n_blocks=2, hidden=64, intermediate=128)
    lm.model.save_pretrained(d, **({"max_shard_size": shard} if shard else {}))
    lm.tokenizer.save_pretrained(str(d))
    return d


def _nothing_half_written(parent: Path, out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in parent.iterdir() if is_partial_output(p)] == []


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "in-memory"])
def test_missing_shard(cli, tmp_path, home, stream):
    src = _save(tmp_path / "m")
    victim = sorted(src.glob("model-*.safetensors"))[1]
    victim.unlink()
    r = cli("quantize", src, *(["--stream"] if stream else []), *RTN, "-o", tmp_path / "q")
    assert r.code != 0
    line = r.error_line()
    assert victim.name in line
    assert "restore" in r.err.splitlines()[-1]
    _nothing_half_written(tmp_path, tmp_path / "q")


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int8], ids=["float8", "int8"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "in-memory"])
def test_dtype_nothing_reads(cli, tmp_path, home, dtype, stream):
    from safetensors.torch import load_file, save_file

    src = _save(tmp_path / "d", shard=None)
    t = load_file(src / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    t[name] = t[name].clamp(-1, 1).to(dtype)
    save_file(t, src / "model.safetensors", metadata={"format": "pt"})
    r = cli("quantize", src, *(["--stream"] if stream else []), *RTN, "-o", tmp_path / "q")
    assert r.code != 0
    line = r.error_line()
    assert name in line, line
    assert ("F8_E4M3" if dtype == torch.float8_e4m3fn else "I8") in line, line
    fix = r.err.splitlines()[-1]
    assert "float32" in fix or "bfloat16" in fix, fix
    assert ("--stream" in fix) == stream  # the in-memory path's fix does not mention streaming
    _nothing_half_written(tmp_path, tmp_path / "q")


def _fill_disk_after(monkeypatch, n_bytes: int) -> list[int]:
    """Every weights file written from here on fails with ENOSPC once ``n_bytes`` of tensor data
    went into it (the bytes before are really written, as on a disk that fills up)."""
    import slimline.artifact.io as io
    import slimline.artifact.stream as st

    real = io.write_safetensors
    fired = []

    def write(path, entries, chunks, *a, **k):
        def limited(name):
            for buf in chunks(name):
                fired.append(memoryview(buf).nbytes)
                if sum(fired) > n_bytes:
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))
                yield buf

        fired.clear()
        return real(path, entries, limited, *a, **k)

    monkeypatch.setattr(io, "write_safetensors", write)
    monkeypatch.setattr(st, "write_safetensors", write)
    return fired


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "in-memory"])
def test_disk_full_mid_write_then_rerun(cli, tmp_path, home, monkeypatch, stream):
    src = _save(tmp_path / "m")
    out = tmp_path / "q"
    args = ["quantize", src, *(["--stream"] if stream else []), *RTN, "-o", out]
    fired = _fill_disk_after(monkeypatch, 40_000)
    r = cli(*args)
    assert sum(fired) > 40_000  # it failed mid-file, not before writing
    assert r.code != 0
    line = r.error_line()
    assert "ran out of space" in line or "No space left" in line, line
    assert "free space" in r.err.splitlines()[-1]
    _nothing_half_written(tmp_path, out)
    monkeypatch.undo()
    monkeypatch.setenv("SLIMLINE_HOME", str(home))
    r = cli(*args)  # space freed: the same command completes
    assert r.code == 0, r.err
    assert json.loads((out / "slimline.json").read_text())["stages"]
    assert [p.name for p in tmp_path.iterdir() if is_partial_output(p)] == []


def test_streamed_run_disk_full_resumes_from_its_baseline(cli, tmp_path, home, monkeypatch):
    """`slimline run` streamed: the disk fills while the stage's checkpoint is written; the run
    dir keeps its finished baseline, the rerun takes it and completes."""
    import yaml

    src = _save(tmp_path / "m")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "scale", "model": str(src), "stream": True,
        "data": {"calibration": {"n": 16, "seq_len": 32}},
        "stages": [{"quant.rtn": {"bits": 4, "group_size": 32}}],
        "eval": {"datasets": ["python-docs"], "windows": 2, "seq_len": 32,
                 "metrics": ["ppl", "kl/teacher"], "latency": None},
    }))  # fmt: skip
    run_dir = tmp_path / "run"
    import slimline.calib.stream as cs

    calls = []

    real = cs.compress_streamed

    def compress_then_fill(*a, **k):  # the baseline is written; the stage's checkpoint fills it
        calls.append(1)
        _fill_disk_after(monkeypatch, 10_000)
        return real(*a, **k)

    monkeypatch.setattr(cs, "compress_streamed", compress_then_fill)
    r = cli("run", recipe, "-o", run_dir)
    assert calls and r.code != 0
    assert "ran out of space" in r.error_line()
    state = json.loads((run_dir / "run.json").read_text())
    assert "baseline" in state and state["stages"] == []
    assert not (run_dir / "stages" / "01-quant.rtn").exists()
    assert [p.name for p in (run_dir / "stages").iterdir() if is_partial_output(p)] == []
    base_digest = state["baseline"]["digest"]
    monkeypatch.undo()
    monkeypatch.setenv("SLIMLINE_HOME", str(home))
    r = cli("run", recipe, "-o", run_dir)
    assert r.code == 0, r.err
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "finished" and state["baseline"]["digest"] == base_digest
    assert state["stream"]["streamed"] is True and len(state["stages"]) == 1
