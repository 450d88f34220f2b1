"""Tiny random models of every supported family (for fast tests) and truncated real models."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from slimline.errors import ConfigError
from slimline.models.arch import get_arch
from slimline.models.load import LoadedModel

# Families with a tiny test config: real transformers classes at toy size.
TINY_FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma3_text",
    "phi3",
    "gpt2",
    "opt",
    "bert",
)


@lru_cache(maxsize=2)
def _tokenizer(kind: str) -> Any:
    from transformers import AutoTokenizer

    from slimline.models.bundled import bundled_path

    name = "minilm-l6" if kind == "encoder" else "smollm2-135m"
    return AutoTokenizer.from_pretrained(str(bundled_path(name)), local_files_only=True)


def tiny_config(
    family: str,
    *,
    vocab_size: int,
    n_blocks: int = 2,
    hidden: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    intermediate: int | None = None,
) -> Any:
    """An HF config of ``family`` at toy size; real architecture classes, random weights."""
    import transformers as tf

    inter = intermediate or 2 * hidden
    common = {"vocab_size": vocab_size}
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[
            family
        ]
        return cls(
            **common,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=n_blocks,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv_heads,
            max_position_embeddings=1024,
            tie_word_embeddings=family == "llama",
        )
    if family in ("qwen3", "gemma3_text", "phi3"):
        hd = hidden // n_heads
        shared = {
            "hidden_size": hidden,
            "intermediate_size": inter,
            "num_hidden_layers": n_blocks,
            "num_attention_heads": n_heads,
            "num_key_value_heads": n_kv_heads,
            "max_position_embeddings": 1024,
        }
        if family == "qwen3":
            return tf.Qwen3Config(**common, **shared, head_dim=hd, tie_word_embeddings=True)
        if family == "gemma3_text":
            # a short window and one global layer in two, so sliding layers are exercised;
            # soft-capping on, as Gemma 2 ships it (Gemma 3 leaves it off by default)
            return tf.Gemma3TextConfig(
                **common,
                **shared,
                head_dim=hd,
                query_pre_attn_scalar=hd,
                sliding_window=8,
                layer_types=[
                    "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_blocks)
                ],
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
            )
        return tf.Phi3Config(
            **common,
            **shared,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
    if family == "gpt2":
        return tf.GPT2Config(
            **common,
            bos_token_id=1,
            eos_token_id=2,
            n_embd=hidden,
            n_layer=n_blocks,
            n_head=n_heads,
            n_inner=inter,
            n_positions=1024,
        )
    if family == "opt":
        return tf.OPTConfig(
            **common,
            hidden_size=hidden,
            ffn_dim=inter,
            num_hidden_layers=n_blocks,
            num_attention_heads=n_heads,
            word_embed_proj_dim=hidden,
            max_position_embeddings=1024,
        )
    if family == "bert":
        return tf.BertConfig(
            **common,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=n_blocks,
            num_attention_heads=n_heads,
            max_position_embeddings=512,
        )
    raise ConfigError(
        f"no tiny config for family {family!r}",
        f"use one of: {', '.join(TINY_FAMILIES)}",
    )


def tiny_model(
    family: str = "llama",
    *,
    n_blocks: int = 2,
    hidden: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    intermediate: int | None = None,
    seed: int = 0,
) -> LoadedModel:
    """A randomly initialised model of ``family`` with a real tokenizer (SmolLM2's or MiniLM's)."""
    from transformers import AutoModel, AutoModelForCausalLM

    kind = "encoder" if family == "bert" else "causal-lm"
    tok = _tokenizer(kind)
    cfg = tiny_config(
        family,
        vocab_size=len(tok),
        n_blocks=n_blocks,
        hidden=hidden,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        intermediate=intermediate,
    )
    torch.manual_seed(seed)
    cls = AutoModel if kind == "encoder" else AutoModelForCausalLM
    model = cls.from_config(cfg, dtype=torch.float32)
    model.eval()
    return LoadedModel(model, tok, get_arch(model), kind, f"tiny-{family}")


def truncate(lm: LoadedModel, n_blocks: int) -> LoadedModel:
    """A deep copy of ``lm`` keeping its first ``n_blocks`` blocks (real weights, fast tests)."""
    arch = lm.arch
    total = arch.n_blocks(lm.model.config)
    if not 1 <= n_blocks <= total:
        raise ConfigError(f"cannot keep {n_blocks} of {total} blocks", f"choose 1..{total}")
    model = copy.deepcopy(lm.model)
    blocks = arch.blocks(model)
    keep = nn.ModuleList(list(blocks)[:n_blocks])
    parent, _, child = arch.block_path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, keep)
    setattr(model.config, arch.config_keys["n_blocks"], n_blocks)
    if hasattr(model.config, "layer_types") and model.config.layer_types is not None:
        model.config.layer_types = list(model.config.layer_types)[:n_blocks]
    model.eval()
    return LoadedModel(
        model, lm.tokenizer, get_arch(model), lm.kind, f"{lm.source}[:{n_blocks}]", lm.path
    )


@torch.no_grad()
def embed(
    lm: LoadedModel | nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Sentence embeddings as all-MiniLM-L6-v2 makes them: mean of token states, L2-normalised."""
    model = lm.model if isinstance(lm, LoadedModel) else lm
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
