"""LoRA adapters for recovery fine-tuning, through peft: one base model, many small adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from slimline.errors import ConfigError


def attach_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    targets: list[str] | None = None,
) -> Any:
    """Wrap ``model`` with trainable LoRA adapters on ``targets`` (default: the attention and MLP
    projections named by the arch map); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    from slimline.models.arch import get_arch

    if r < 1:
        raise ConfigError(f"LoRA rank must be >= 1 (got {r})", "use r=8 or 16")
    if targets is None:
        arch = get_arch(model)
        targets = sorted(
            {n.rsplit(".", 1)[-1] for n in arch.attention_linears() + arch.mlp_linears()}
        )
    cfg = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none"
    )
    return get_peft_model(model, cfg)


def save_adapter(peft_model: Any, out_dir: str | Path) -> Path:
    """Only the adapter weights (safetensors, a few MB): many adapters share one base model."""
    out = Path(out_dir)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    return out


def load_adapter(base: nn.Module, adapter_dir: str | Path) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)


def merge_lora(peft_model: Any) -> nn.Module:
    """Fold the adapters into the base weights and return the plain model."""
    return peft_model.merge_and_unload()
