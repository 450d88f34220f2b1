"""Write a (compressed) llama-family model as a GGUF file that llama.cpp serves.

Whatever form a layer has in slimline (packed ints, bitmask-sparse, low-rank factors), its
dense weight is recovered by running the layer on the identity matrix, so every compressed
module exports without special cases; GGUF then stores it as F32, F16, Q8_0, Q4_0 or Q4_1.
The tokenizer travels as GGUF's ``gpt2`` BPE vocabulary read from the HF ``tokenizer.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimline.errors import ConfigError, UnsupportedArchitectureError
from slimline.models.arch import get_arch

QTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The [out, in] dense weight a linear-like module applies (bias removed)."""
    if type(module) is nn.Linear:
        return module.weight.detach().float()
    in_features = getattr(module, "in_features", None)
    if in_features is None:
        raise ConfigError(
            f"cannot recover a dense weight from {type(module).__name__}",
            "give the module an in_features attribute",
        )
    with torch.no_grad():
        eye = torch.eye(in_features)
        y = module(eye)
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            y = y - bias
    return y.T.contiguous().float()


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's rotary layout: pairs interleaved per head (convert_hf_to_gguf permute)
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tokenizer_fields(tokenizer: Any, writer: Any, pre: str) -> None:
    import gguf

    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        tj = json.loads((Path(d) / "tokenizer.json").read_text())
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise UnsupportedArchitectureError(
            f"GGUF export supports byte-level BPE tokenizers; this one is {model.get('type')!r}",
            "export to ONNX or a Hugging Face directory instead",
        )
    vocab: dict[str, int] = dict(model["vocab"])
    for added in tj.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for t, i in vocab.items():
        tokens[i] = t
    special = {a["id"] for a in tj.get("added_tokens", []) if a.get("special")}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, tid in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("unk", tokenizer.unk_token_id),
        ("pad", tokenizer.pad_token_id),
    ):
        if tid is not None:
            getattr(writer, f"add_{name}_token_id")(int(tid))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)


def _add_tensor(writer: Any, name: str, t: torch.Tensor, qtype: str) -> None:
    import gguf
    from gguf import quants

    arr = t.detach().float().numpy()
    if arr.ndim == 1 or qtype == "f32":
        writer.add_tensor(name, arr.astype(np.float32))
        return
    if qtype == "f16":
        writer.add_tensor(name, arr.astype(np.float16))
        return
    q = getattr(gguf.GGMLQuantizationType, qtype.upper())
    block = gguf.GGML_QUANT_SIZES[q][0]
    if arr.shape[-1] % block:
        writer.add_tensor(name, arr.astype(np.float16))  # rows not a multiple of the block size
        return
    writer.add_tensor(
        name,
        quants.quantize(arr, q),
        raw_shape=quants.quant_shape_to_byte_shape(arr.shape, q),
        raw_dtype=q,
    )


def export_gguf(
    model: nn.Module,
    tokenizer: Any,
    out_path: str | os.PathLike[str],
    *,
    qtype: str = "f16",
    pre: str = "smollm",
    name: str | None = None,
) -> Path:
    """Write ``model`` (llama family) to ``out_path`` as GGUF; atomic (temp file, then rename)."""
    import gguf

    if qtype not in QTYPES:
        raise ConfigError(f"unknown GGUF type {qtype!r}", f"use one of: {', '.join(QTYPES)}")
    arch = get_arch(model)
    if arch.family != "llama":
        raise UnsupportedArchitectureError(
            f"GGUF export supports the llama family (llama, mistral, qwen2 layouts), not {arch.model_type}",
            "export to a Hugging Face directory instead",
        )
    cfg = model.config
    n_head, n_kv = arch.n_heads(cfg), arch.n_kv_heads(cfg)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", dir=out.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(name or getattr(cfg, "name_or_path", "") or "slimline-model")
        blocks = arch.blocks(model)
        w.add_block_count(len(blocks))
        w.add_context_length(int(getattr(cfg, "max_position_embeddings", 2048)))
        w.add_embedding_length(arch.hidden(cfg))
        w.add_feed_forward_length(arch.intermediate(cfg))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_rope_dimension_count(arch.head_dim(cfg))
        rope = getattr(cfg, "rope_parameters", None) or {}
        w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_vocab_size(int(cfg.vocab_size))
        w.add_file_type({"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7}[qtype])
        _tokenizer_fields(tokenizer, w, pre)
        _add_tensor(w, "token_embd.weight", model.get_submodule(arch.embed).weight, qtype)
        names = {
            "q": "attn_q",
            "k": "attn_k",
            "v": "attn_v",
            "o": "attn_output",
            "mlp_out": "ffn_down",
        }
        for i, blk in enumerate(blocks):
            _add_tensor(
                w,
                f"blk.{i}.attn_norm.weight",
                blk.get_submodule(arch.roles["attn_norm"]).weight,
                "f32",
            )
            _add_tensor(
                w,
                f"blk.{i}.ffn_norm.weight",
                blk.get_submodule(arch.roles["mlp_norm"]).weight,
                "f32",
            )
            for role, gname in names.items():
                wt = dense_weight(blk.get_submodule(arch.roles[role]))
                if role in ("q", "k"):
                    wt = torch.from_numpy(_permute_qk(wt.numpy(), n_head if role == "q" else n_kv))
                _add_tensor(w, f"blk.{i}.{gname}.weight", wt, qtype)
            gate, up = arch.roles["mlp_in"]
            _add_tensor(w, f"blk.{i}.ffn_gate.weight", dense_weight(blk.get_submodule(gate)), qtype)
            _add_tensor(w, f"blk.{i}.ffn_up.weight", dense_weight(blk.get_submodule(up)), qtype)
        _add_tensor(w, "output_norm.weight", model.get_submodule(arch.final_norm).weight, "f32")
        if arch.lm_head and not arch.tied(model):
            _add_tensor(w, "output.weight", dense_weight(model.get_submodule(arch.lm_head)), qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
