"""Static cost of a model: parameters and bytes as stored (by dtype), and FLOPs per token.

Bytes count what a ``state_dict`` would hold: every parameter and every persistent buffer, so
compressed modules' packed integer buffers, scales and masks are counted as they are stored,
and a weight shared by two names (a tied embedding / lm_head) is counted once.

FLOPs are analytic, from the architecture map and the actual layer shapes (so structurally
pruned models are counted as they are): 2 FLOPs per multiply-accumulate of every linear layer,
plus the attention score (Q·Kᵀ) and value (A·V) products, which grow with the context length.
Elementwise work (norms, activations, softmax, rotary) is left out, as FlopCounterMode does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimline.errors import InputError
from slimline.models import Arch


def _storage_key(t: torch.Tensor) -> tuple[int, int, tuple[int, ...], str]:
    try:
        # meta tensors all report pointer 0: two of one shape are not one tensor
        ptr = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
    except (RuntimeError, NotImplementedError):  # exotic tensors: fall back to identity
        ptr = id(t)
    return (ptr, t.storage_offset(), tuple(t.shape), str(t.dtype))


def _is_compressed_linear(mod: nn.Module) -> bool:
    """A module standing in for a Linear without a dense ``weight`` Parameter (packed ints...)."""
    w = mod._parameters.get("weight") if hasattr(mod, "_parameters") else None
    return (
        w is None
        and isinstance(getattr(mod, "in_features", None), int)
        and isinstance(getattr(mod, "out_features", None), int)
    )


@dataclass
class ParamStats:
    """Parameter counts and stored bytes; ``by_dtype`` maps dtype -> tensors/elements/bytes."""

    total: int  # logical parameters (a packed 4-bit weight counts its in*out weights)
    nonzero: int
    stored_elements: int  # elements actually held (params + persistent buffers)
    bytes: int
    by_dtype: dict[str, dict[str, int]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "nonzero": self.nonzero,
            "stored_elements": self.stored_elements,
            "bytes": self.bytes,
            "by_dtype": self.by_dtype,
        }


def _nonzero(t: torch.Tensor) -> int:
    """Non-zeros of a parameter; a tensor subclass that cannot count them (torchao's packed
    int tensors, meta tensors) counts as dense rather than failing the whole profile."""
    if t.device.type == "meta":
        return t.numel()
    try:
        return int(torch.count_nonzero(t))
    except NotImplementedError:  # the subclass has no count_nonzero kernel
        return t.numel()


@torch.no_grad()
def param_stats(model: nn.Module) -> ParamStats:
    """Count parameters (dense and non-zero) and the bytes of everything a state dict stores."""
    seen: set[tuple[int, int, tuple[int, ...], str]] = set()
    by_dtype: dict[str, dict[str, int]] = {}
    total = nonzero = elements = nbytes = 0

    def add(t: torch.Tensor) -> bool:
        nonlocal elements, nbytes
        key = _storage_key(t)
        if key in seen:
            return False
        seen.add(key)
        d = by_dtype.setdefault(
            str(t.dtype).removeprefix("torch."), {"tensors": 0, "elements": 0, "bytes": 0}
        )
        d["tensors"] += 1
        d["elements"] += t.numel()
        d["bytes"] += t.numel() * t.element_size()
        elements += t.numel()
        nbytes += t.numel() * t.element_size()
        return True

    for mod in model.modules():
        for p in mod._parameters.values():
            if p is not None and add(p):
                total += p.numel()
                nonzero += _nonzero(p)
        for bname, b in mod._buffers.items():
            if b is not None and bname not in mod._non_persistent_buffers_set:
                add(b)
        if _is_compressed_linear(mod):
            # The logical weight behind packed buffers; its zeros are countable only when the
            # module can show a dense weight (a `weight` property) or keeps a boolean mask.
            n = mod.in_features * mod.out_features
            total += n
            dense = getattr(mod, "weight", None)
            mask = getattr(mod, "mask", None)
            if isinstance(dense, torch.Tensor) and dense.numel() == n:
                nonzero += _nonzero(dense)  # a streamed model's written blocks: meta, dense
            elif isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.numel() == n:
                nonzero += int(mask.sum())
            else:
                nonzero += n
            bias = mod._buffers.get("bias")
            if bias is not None:
                total += bias.numel()
                nonzero += int(torch.count_nonzero(bias))
    return ParamStats(total, nonzero, elements, nbytes, dict(sorted(by_dtype.items())))


def size_on_disk(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a file, or of every file under a directory (an artifact, an HF dir)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist", "pass the path of a saved model or artifact")
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())


# --- FLOPs -------------------------------------------------------------------------------------


def linear_io(mod: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear, a GPT-2 Conv1D, or a compressed linear with in/out_features."""
    if isinstance(getattr(mod, "in_features", None), int):
        return int(mod.in_features), int(mod.out_features)
    if hasattr(mod, "nf"):  # transformers Conv1D: weight is (in, out)
        return int(mod.weight.shape[0]), int(mod.nf)
    w = getattr(mod, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 2:
        return int(w.shape[1]), int(w.shape[0])
    raise InputError(f"cannot read the shape of {type(mod).__name__}", "report this model type")


def _linear_macs(block: nn.Module, names: list[str]) -> int:
    macs = 0
    for n in names:
        i, o = linear_io(block.get_submodule(n))
        macs += i * o
    return macs


def flops_per_token(
    model: nn.Module, arch: Arch, context: int, *, mode: str = "prefill"
) -> dict[str, float]:
    """Analytic FLOPs per token at ``context`` tokens (2 per multiply-accumulate).

    ``mode="prefill"``: the average token of a ``context``-long forward in which every query
    meets all ``context`` keys (dense attention kernels compute the masked half too; this is what
    FlopCounterMode counts). ``mode="decode"``: one new token attending ``context`` cached keys.
    Returns the parts (``linear``, ``attention``, ``lm_head``, ``pooler``) and ``total``.
    """
    if context < 1:
        raise InputError(f"context must be at least 1 token (got {context})", "pass context >= 1")
    if mode not in ("prefill", "decode"):
        raise InputError(f"mode must be 'prefill' or 'decode' (got {mode!r})", "pick one of them")
    cfg = model.config
    names = arch.attention_linears() + arch.mlp_linears()
    blocks = arch.blocks(model)
    linear = sum(_linear_macs(b, names) for b in blocks)
    # Q·Kᵀ and A·V: each query head does head_dim MACs per key, for scores and for values.
    # In decode, a sliding-window layer (Gemma's local layers, Mistral) meets at most its window
    # of cached keys; dense prefill kernels compute every key and mask, so prefill stays full.
    q_heads, hd = arch.n_heads(cfg), arch.head_dim(cfg)
    spans = [
        min(context, arch.sliding_window(cfg, i) or context) if mode == "decode" else context
        for i in range(len(blocks))
    ]
    attention = sum(2 * q_heads * hd * span for span in spans)
    lm_head = 0
    if arch.lm_head is not None:
        i, o = linear_io(model.get_submodule(arch.lm_head))
        lm_head = i * o
    pooler = 0.0
    for name, mod in model.named_modules():
        if name.endswith("pooler.dense"):
            i, o = linear_io(mod)
            # Applied to the first token of each sequence only: spread over the sequence.
            pooler = i * o / context if mode == "prefill" else 0.0
    parts = {
        "linear": 2.0 * linear,
        "attention": 2.0 * attention,
        "lm_head": 2.0 * lm_head,
        "pooler": 2.0 * pooler,
    }
    parts["total"] = sum(parts.values())
    return parts
