"""``tiny_causal_lm``: a seeded, randomly initialised HF causal LM at toy size, built straight
from its transformers class (no tokenizer, unlike ``slimline.models.tiny_model``), for tests that
save, sign and load artifacts. ``tests/`` is on ``sys.path`` (pytest puts the root conftest's
folder there), so any test area imports it as ``from tiny_hf import tiny_causal_lm``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# 1 block, 32 wide, GQA (2 query heads, 1 KV head): small enough for signed artifacts in fixtures.
SMALL = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def tiny_causal_lm(model_class: type | None = None, *, seed: int = 0, **config: Any) -> nn.Module:
    """``model_class`` (default ``LlamaForCausalLM``) in eval mode, weights drawn after
    ``torch.manual_seed(seed)``, its config ``SMALL`` updated with ``config``."""
    if model_class is None:
        from transformers import LlamaForCausalLM

        model_class = LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = model_class.config_class(**{**SMALL, **config})
    return model_class(cfg).eval()
