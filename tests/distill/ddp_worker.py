"""Run by tests/distill/test_distributed.py under ``accelerate launch`` (or plain python): trains a
tiny student uninterrupted, then again with a crash after step 3 and a resume, and writes both
loss curves as JSON (main process only). Not a test module itself."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from slimline.distill.config import DistillConfig
from slimline.distill.hooks import LoopHook
from slimline.distill.trainer import train
from slimline.models import tiny_model


class Crash(LoopHook):
    name = "crash"

    def after_step(self, model, step):
        if step == 3:
            raise KeyboardInterrupt("simulated crash after step 3")


def main(out: Path, per_process_batch: int) -> None:
    from accelerate import PartialState

    teacher = tiny_model("llama", n_blocks=2, hidden=64, seed=0).model
    ids = torch.randint(0, 49152, (32, 16), generator=torch.Generator().manual_seed(0))
    cfg = DistillConfig(
        batch_size=per_process_batch, max_steps=5, lr=3e-3, checkpoint_every=2,
        mixed_precision="no", clip=1.0, seed=0,
    )  # fmt: skip

    def student():
        return tiny_model("llama", n_blocks=1, hidden=64, seed=1).model

    full = train(student(), teacher, ids, cfg, out / "full")
    state = PartialState()  # the one the trainer's Accelerator set up (gloo on CPU)
    s = student()
    try:
        train(s, teacher, ids, cfg, out / "crash", hooks=[Crash()])
    except KeyboardInterrupt:
        pass
    state.wait_for_everyone()
    resumed = train(student(), teacher, ids, cfg, out / "crash", resume=True)  # a fresh load
    if state.is_main_process:
        logs = [json.loads(x) for x in (out / "full" / "train_log.jsonl").read_text().splitlines()]
        (out / "result.json").write_text(
            json.dumps(
                {
                    "processes": state.num_processes,
                    "full": full.losses,
                    "resumed": resumed.losses,
                    "resumed_from": resumed.resumed_from,
                    "tokens": full.tokens,
                    "logged_processes": logs[-1]["processes"],
                    "checkpoints": sorted(p.name for p in (out / "full" / "checkpoints").iterdir()),
                }
            )
        )
    state.wait_for_everyone()
    if state.is_main_process:
        shutil.rmtree(out / "crash", ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
