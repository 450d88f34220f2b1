"""The verbs: ``quantize`` a model in place, ``export_dequantized`` it as a plain HF model."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimline.core import Context, StageRecord, apply_technique, set_submodule
from slimline.errors import ConfigError, InputError
from slimline.quant.config import WeightQuantConfig
from slimline.quant.linear import QuantLinear, quant_linears


def _unwrap(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module) and hasattr(model, "model"):  # a LoadedModel
        model = model.model
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"expected a torch model, got {type(model).__name__}",
            "pass LoadedModel.model or a transformers model",
        )
    return model


def quantize(
    model: Any,
    config: WeightQuantConfig,
    data: torch.Tensor | None = None,
    ctx: Context | None = None,
) -> StageRecord:
    """Quantize ``model``'s weights in place with ``config`` (Rtn, Gptq, Awq); returns the record.

    ``data``: ``[samples, tokens]`` calibration ids (GPTQ and AWQ), overriding ``ctx.calib``.
    On any error the model is left as it was.
    """
    model = _unwrap(model)
    if not isinstance(config, WeightQuantConfig):
        raise ConfigError(
            f"{type(config).__name__} is not a weight quantization config",
            "use slimline.quant.Rtn, Gptq or Awq",
        )
    ctx = ctx or Context()
    if data is not None:
        ctx.calib = data
    with torch.no_grad():
        return apply_technique(model, config, ctx)


def dequantize_model(model: Any) -> int:
    """Replace every QuantLinear by a plain nn.Linear holding its effective fp32 weight."""
    model = _unwrap(model)
    qls = quant_linears(model)
    for name, q in qls.items():
        lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
        lin.weight.data = q.effective_weight().contiguous()
        if q.bias is not None:
            lin.bias.data = q.bias.detach().clone()
        set_submodule(model, name, lin)
    return len(qls)


def export_dequantized(
    model: Any, tokenizer: Any, out_dir: str | os.PathLike[str], overwrite: bool = False
) -> Path:
    """Write a quantized model as an ordinary fp32 HF model that ``from_pretrained`` loads.

    The weights hold exactly the dequantized values (the accuracy of the quantized model, none of
    its size). Written to a temp dir beside ``out_dir`` and renamed, so nothing is half-written;
    the model passed in is not changed.
    """
    import copy

    model = _unwrap(model)
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(
            f"{type(model).__name__} cannot be saved as a transformers model",
            "export a transformers PreTrainedModel",
        )
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise InputError(
            f"{out} already exists",
            "choose another directory, or call export_dequantized(..., overwrite=True)",
        )
    plain = copy.deepcopy(model)
    dequantize_model(plain)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        plain.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["QuantLinear", "dequantize_model", "export_dequantized", "quantize"]
