"""A real test-local technique (RTN fake-quantization of Linear weights) and a tiny model on disk.

Registered as ``test.rtn``: the runner finds it through the technique registry exactly like a
shipped technique, which is what these tests prove. ``delay_s`` / ``signal`` let a test kill a
run while this stage is running.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from slimline.core import Context, SizeEffect, TechniqueConfig, register_technique, select_modules


class TestRtn(TechniqueConfig):
    kind: ClassVar[str] = "test.rtn"
    bits: int = 8
    targets: list[str] = []
    ignore: list[str] = ["lm_head"]
    delay_s: float = 0.0
    signal: str | None = None

    def size_effect(self) -> SizeEffect:
        return SizeEffect(bits=self.bits)


@register_technique(TestRtn, "test-only RTN: symmetric per-output-channel fake quantization")
def apply_test_rtn(model: nn.Module, cfg: TestRtn, ctx: Context) -> dict[str, Any]:
    # First run only: announce the stage and linger so a test can kill the process here; a
    # resumed run finds the signal file and goes straight on.
    if cfg.signal and not Path(cfg.signal).exists():
        Path(cfg.signal).write_text("started")
        time.sleep(cfg.delay_s)
    qmax = 2 ** (cfg.bits - 1) - 1
    layers = {}
    mods = select_modules(model, cfg.targets, cfg.ignore, within=["model.layers"])
    with torch.no_grad():
        for name, mod in mods.items():
            w = mod.weight
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / qmax
            q = (w / scale).round().clamp(-qmax - 1, qmax) * scale
            err = float((q - w).pow(2).mean())
            w.copy_(q)
            layers[name] = {"bits": cfg.bits, "mse": err}
    return {"layers": layers, "n_layers": len(layers)}


def save_tiny(path: Path, n_blocks: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A tiny random llama with SmolLM2's tokenizer, saved as a Hugging Face directory."""
    from slimline.models import tiny_model

    lm = tiny_model("llama", n_blocks=n_blocks, hidden=hidden, seed=seed)
    lm.model.save_pretrained(str(path))
    lm.tokenizer.save_pretrained(str(path))
    return path


def tiny_recipe(model: Path, stages: list[dict], **over: Any) -> dict[str, Any]:
    """A recipe dict for the tiny model: small eval and latency so it runs in seconds."""
    rec = {
        "name": "tiny",
        "model": str(model),
        "data": {"calibration": {"n": 2, "seq_len": 32}},
        "stages": stages,
        "eval": {
            "datasets": ["python-docs"],
            "windows": 2,
            "seq_len": 64,
            "latency": {
                "threads": 1,
                "prefill_tokens": 32,
                "decode_tokens": 4,
                "prompt_tokens": 8,
                "repeats": 1,
            },
        },
    }
    rec.update(over)
    return rec
