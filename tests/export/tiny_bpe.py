"""Tiny llama-family models with a 400-token byte-level BPE trained on python-docs, for GGUF and
engine tests: GGUF readers parse vocabularies token by token (SmolLM2's 49k-token one takes
~20 s through transformers), and a 400-row head keeps llama.cpp's per-position logits small.

Weights are drawn at ``1.5/sqrt(fan_in)`` (not HF's 0.02) so logits spread over several nats: a
wrong conversion (e.g. an un-permuted q/k) then changes the outputs clearly.
"""

from __future__ import annotations

import functools
import math

import torch

from slimline.models import LoadedModel, get_arch, tiny_config


@functools.cache
def bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from slimline.data import load_text

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator([load_text("python-docs")[:50_000]], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def small_vocab_model(
    family: str = "llama", seed: int = 0, spread: bool = True, hidden: int = 64
) -> LoadedModel:
    """``hidden=256`` gives widths that K-quant super-blocks (256 weights) divide."""
    from transformers import AutoModelForCausalLM

    tok = bpe_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        tiny_config(family, vocab_size=len(tok), hidden=hidden, intermediate=max(128, hidden))
    )
    if spread:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 2:
                    p.normal_(0, 1.0 if "embed" in name else 1.5 / math.sqrt(p.shape[1]))
                elif name.endswith("bias"):
                    p.normal_(0, 0.1)
    model.eval()
    return LoadedModel(model, tok, get_arch(model), "causal-lm", f"tiny-bpe-{family}")
