"""Helpers for artifact tests: a real codec module and a tiny Llama."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from slimline.core import Codec, register_codec
from tiny_hf import tiny_causal_lm


@register_codec
class Int8RowLinear(nn.Module, Codec):
    """A real compressed module for the codec path: int8 weights with one fp32 scale per row."""

    codec: ClassVar[str] = "tests.int8_row_linear"

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.bias = nn.Parameter(bias) if bias is not None else None

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> Int8RowLinear:
        w = lin.weight.detach()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = lin.bias.detach().clone() if lin.bias is not None else None
        return cls(q, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qweight.float() * self.scale[:, None]
        return nn.functional.linear(x, w, self.bias)

    def pack(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"qweight": self.qweight, "scale": self.scale}
        if self.bias is not None:
            tensors["bias"] = self.bias.detach()
        return tensors, {
            "bits": 8,
            "in_features": self.qweight.shape[1],
            "out_features": self.qweight.shape[0],
        }

    @classmethod
    def unpack(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Int8RowLinear:
        assert tuple(tensors["qweight"].shape) == (meta["out_features"], meta["in_features"])
        return cls(tensors["qweight"], tensors["scale"], tensors.get("bias"))


def tiny_llama(seed: int = 0, tie: bool = True) -> nn.Module:
    return tiny_causal_lm(
        seed=seed,
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
