"""Data-parallel distillation (issue 15): two processes (``accelerate launch``, gloo on this CPU) at
the same global batch follow the one-process loss curve, write one log and one set of
checkpoints, and a crashed two-process run resumes to the uninterrupted curve."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_two_processes_follow_the_one_process_curve(tmp_path):
    from slimline.distill.config import DistillConfig
    from slimline.distill.trainer import train
    from slimline.models import tiny_model

    accelerate = Path(sys.executable).with_name("accelerate")
    # TMPDIR: torch elastic leaves a directory per launch in the temp dir
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLIMLINE_QUIET": "1", "TMPDIR": str(tmp_path)}
    # fmt: off
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(WORKER), str(tmp_path / "two"), "2"]
    # fmt: on
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    # meanwhile, the reference: one process, per-process batch 4 = the global batch of 2 x 2
    teacher = tiny_model("llama", n_blocks=2, hidden=64, seed=0).model
    ids = torch.randint(0, 49152, (32, 16), generator=torch.Generator().manual_seed(0))
    cfg = DistillConfig(
        batch_size=4, max_steps=5, lr=3e-3, checkpoint_every=2, mixed_precision="no", seed=0
    )
    student = tiny_model("llama", n_blocks=1, hidden=64, seed=1).model
    one = train(student, teacher, ids, cfg, tmp_path / "one")

    out, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, out.decode()[-3000:]
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["processes"] == 2 and two["logged_processes"] == 2
    # measured: curves agree to ~5e-8 relative (the gradient all-reduce sums in another order)
    assert two["full"] == pytest.approx(one.losses, rel=1e-5, abs=0)
    assert two["full"][0] != two["full"][-1]  # it trained
    assert two["tokens"] == one.tokens == 5 * 4 * 16
    # the crashed run resumed from its step-2 checkpoint onto the uninterrupted curve
    assert two["resumed_from"] == 2
    assert two["resumed"] == pytest.approx(two["full"], rel=1e-6, abs=0)
    # one writer: one log line per step, the checkpoints of one run
    log = (tmp_path / "two" / "full" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [1, 2, 3, 4, 5]
    assert two["checkpoints"] == ["step-0000004", "step-0000005"]


def _launch(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).with_name("accelerate")
    # fmt: off
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "slimline.cli", *args]
    # fmt: on
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.timeout(300)
def test_cli_distill_two_processes_one_writer_and_resume(tmp_path):
    """`accelerate launch -n 2 -m slimline.cli distill ...`: both processes train (the log says
    2 processes), one artifact and one registry row are written, the other process prints
    nothing and exits 0; `--resume` with more steps goes on from the 2-process checkpoint."""
    from slimline.models import tiny_model
    from slimline.registry import Registry

    src = tmp_path / "teacher"
    lm = tiny_model("llama", n_blocks=2, hidden=64, seed=0)
    lm.model.save_pretrained(src)
    lm.tokenizer.save_pretrained(str(src))
    home, out, run_dir = tmp_path / "home", tmp_path / "out", tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLIMLINE_QUIET": "1", "SLIMLINE_HOME": str(home)}
    env["TMPDIR"] = str(tmp_path)
    # fmt: off
    args = ["distill", "--teacher", str(src), "--student-from", f"{src}:keep=1,importance=even",
            "-o", str(out), "--run-dir", str(run_dir), "--seq-len", "32", "--batch-size", "2",
            "--checkpoint-every", "1", "--threads", "1", "--json"]
    # fmt: on
    r = _launch([*args, "--max-steps", "2"], env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout.count('"model_dir"') == 1  # one process printed the record
    printed = json.loads(r.stdout[r.stdout.index("{") :])
    assert printed["steps"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["model"]  # one artifact, nothing beside
    rows = Registry(home).list()
    assert sorted(v.name for v in rows) == ["distill", "distill-baseline"]
    log = (run_dir / "work" / "distill" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [1, 2]
    assert {json.loads(x)["processes"] for x in log} == {2}
    ck = sorted(p.name for p in (run_dir / "work" / "distill" / "checkpoints").iterdir())
    assert ck[-1] == "step-0000002" and not [c for c in ck if c.startswith(".")]

    r = _launch([*args, "--max-steps", "3", "--resume"], env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    again = json.loads(r.stdout[r.stdout.index("{") :])
    assert again["steps"] == 3 and again["resumed_from"] == 2
    log = (run_dir / "work" / "distill" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [1, 2, 3]
    rows = Registry(home).list()  # the continued run replaced the artifact: one more version
    assert sorted(v.name for v in rows).count("distill") == 2
    assert sorted(p.name for p in out.iterdir()) == ["model"]
