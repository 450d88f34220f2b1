"""Analytic cost of a recipe's stages before they run: artifact bytes and weight FLOPs per token.

A search prunes a trial whose estimated artifact cannot meet ``max_size_mb`` without running it,
so the estimate follows what each technique stores, layer by layer, using the codecs' own
layouts (a ``QuantLinear`` is built on the meta device to read its buffers' sizes): packed
codes, per-group scales and zeros for weight quantization; bitmask + non-zeros for sparse
storage; two factors for low rank; whole blocks gone for block removal. Plain tensors keep their
dtype; the config/tokenizer files are measured once. The manifest and signature are left out
(a few KB), so the estimate sits a little under the measured size (tests pin how close).

A stage this module has no rule for makes the estimate ``None``: the trial is run, not pruned.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimline.core import TechniqueConfig, select_modules

HEADER_BYTES_PER_TENSOR = 64  # a safetensors header entry beyond its name (dtype, shape, offsets)


@dataclass(frozen=True)
class Layer:
    """One Linear as a stage sequence leaves it: its shape and how it is stored."""

    in_f: int
    out_f: int
    bias: bool
    elem: int  # bytes per element of a plain tensor (4 for fp32)
    form: str = "dense"  # dense | quant | sparse | lowrank
    nbytes: int = 0
    n_tensors: int = 1
    macs: int = 0


@dataclass
class Shape:
    """What an estimate needs from the base model, read once per process."""

    model: nn.Module
    block_prefix: str
    n_blocks: int
    layers: dict[str, Layer]  # Linear layers inside the blocks
    block_other: dict[int, tuple[int, int]]  # block -> (bytes, tensors) that are not block Linears
    outside: tuple[int, int]  # (bytes, tensors) outside the blocks: embeddings, final norm, head
    head_macs: int
    files_bytes: int  # config.json, generation_config.json, tokenizer files
    _selections: dict[Any, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Estimate:
    """``bytes``: the artifact's size on disk; ``flops``: 2 x multiply-accumulates of the weight
    matrices per token (attention scores left out); ``tensor_bytes``: model.safetensors alone."""

    bytes: int
    tensor_bytes: int
    flops: float

    def metrics(self) -> dict[str, float]:
        return {"size/bytes": float(self.bytes), "flops/weights_per_token": self.flops}


def _dense(in_f: int, out_f: int, bias: bool, elem: int) -> Layer:
    n = in_f * out_f + (out_f if bias else 0)
    return Layer(in_f, out_f, bias, elem, "dense", n * elem, 1 + bias, in_f * out_f)


def _files_bytes(lm: Any) -> int:
    """Bytes of the non-tensor files an artifact carries besides its manifest."""
    with tempfile.TemporaryDirectory() as d:
        lm.model.config.save_pretrained(d)
        gen = getattr(lm.model, "generation_config", None)
        if gen is not None and lm.kind == "causal-lm":
            gen.save_pretrained(d)
        if lm.tokenizer is not None:
            lm.tokenizer.save_pretrained(d)
        return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())


def model_shape(lm: Any) -> Shape:
    """Read the shapes and bytes of ``lm`` (a ``LoadedModel``) that the estimate works from."""
    model, arch = lm.model, lm.arch
    prefix = arch.block_prefix(model)
    blocks = arch.blocks(model)
    layers: dict[str, Layer] = {}
    seen: set[int] = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.startswith(prefix + "."):
            seen.add(id(m.weight))
            if m.bias is not None:
                seen.add(id(m.bias))
            w = m.weight
            layers[name] = _dense(
                m.in_features, m.out_features, m.bias is not None, w.element_size()
            )
    block_other: dict[int, tuple[int, int]] = {}
    outside = [0, 0]
    counted: set[int] = set()
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    persistent = set(model.state_dict(keep_vars=True))
    for name, t in tensors:
        if id(t) in seen or id(t) in counted or name not in persistent:
            continue
        counted.add(id(t))
        nb = t.numel() * t.element_size()
        if name.startswith(prefix + "."):
            b = int(name[len(prefix) + 1 :].split(".", 1)[0])
            by, nt = block_other.get(b, (0, 0))
            block_other[b] = (by + nb, nt + 1)
        else:
            outside[0] += nb
            outside[1] += 1
    head_macs = 0
    if arch.lm_head is not None:
        head = model.get_submodule(arch.lm_head)
        head_macs = int(head.weight.shape[0] * head.weight.shape[1])
    return Shape(
        model,
        prefix,
        len(blocks),
        layers,
        block_other,
        (outside[0], outside[1]),
        head_macs,
        _files_bytes(lm),
    )


def _selected(shape: Shape, cfg: Any, within: bool = True) -> list[str]:
    """The block Linears ``cfg.targets``/``cfg.ignore`` select on the base model (cached)."""
    key = (tuple(cfg.targets), tuple(cfg.ignore))
    if key not in shape._selections:
        sel = select_modules(
            shape.model, cfg.targets, cfg.ignore, within=[shape.block_prefix] if within else None
        )
        shape._selections[key] = [n for n in sel if n in shape.layers]
    return shape._selections[key]


@functools.lru_cache(maxsize=4096)
def _quant_layer(in_f: int, out_f: int, bias: bool, scheme: Any) -> tuple[int, int]:
    from slimline.quant.linear import QuantLinear

    with torch.device("meta"):
        q = QuantLinear(in_f, out_f, scheme, bias=bias)
    bufs = [b for _, b in q.named_buffers() if b is not None and b.numel() > 0]
    return sum(b.numel() * b.element_size() for b in bufs), len(bufs)


State = dict[str, Layer]
Rule = Callable[[Shape, State, Any], State | None]


def _quant(shape: Shape, state: State, cfg: Any) -> State | None:
    scheme = cfg.scheme()
    out = dict(state)
    for name in _selected(shape, cfg):
        lay = state.get(name)
        if lay is None:  # removed by an earlier stage
            continue
        if lay.form != "dense":
            return None  # quantizing a sparse / factorised layer: no rule
        scheme.group(lay.in_f)  # a grid whose blocks do not fit the layer raises ConfigError
        nb, nt = _quant_layer(lay.in_f, lay.out_f, lay.bias, scheme)
        out[name] = replace(lay, form="quant", nbytes=nb, n_tensors=nt)
    return out


def _prune(shape: Shape, state: State, cfg: Any) -> State | None:
    if cfg.storage == "dense":
        return state  # zeros are stored as zeros: same bytes, same dense FLOPs
    if cfg.storage_bits is not None:
        return None
    from slimline.prune.masks import parse_pattern

    out = dict(state)
    for name in _selected(shape, cfg):
        lay = state.get(name)
        if lay is None:
            continue
        if lay.form != "dense":
            return None
        if cfg.pattern:
            n, m = parse_pattern(cfg.pattern)
            share = 1 - n / m
        else:
            share = cfg.layer_sparsity(name)
        total = lay.in_f * lay.out_f
        kept = total - round(share * total)
        nb = (total + 7) // 8 + kept * lay.elem + (lay.out_f * lay.elem if lay.bias else 0)
        out[name] = replace(lay, form="sparse", nbytes=nb, n_tensors=2 + lay.bias)
    return out


def _lowrank(shape: Shape, state: State, cfg: Any) -> State | None:
    from slimline.lowrank.factor import rank_for_ratio

    out = dict(state)
    for name in _selected(shape, cfg):
        lay = state.get(name)
        if lay is None:
            continue
        if lay.form != "dense":
            return None
        r = cfg.rank or rank_for_ratio(lay.out_f, lay.in_f, cfg.rank_ratio or 0.5)
        n = r * (lay.in_f + lay.out_f) + (lay.out_f if lay.bias else 0)
        out[name] = replace(
            lay,
            form="lowrank",
            nbytes=n * lay.elem,
            n_tensors=2 + lay.bias,
            macs=r * (lay.in_f + lay.out_f),
        )
    return out


def _blocks(shape: Shape, state: State, cfg: Any) -> State | None:
    """Whole blocks go; which ones (importance) does not change the bytes of same-shaped blocks,
    so the last ``remove`` are dropped (or the named ``blocks``)."""
    present = sorted({_block(shape, n) for n in state})
    gone = set(cfg.blocks) if cfg.blocks else set(present[len(present) - cfg.remove :])
    return {n: lay for n, lay in state.items() if _block(shape, n) not in gone}


def _same(shape: Shape, state: State, cfg: Any) -> State:
    return state


def _block(shape: Shape, name: str) -> int:
    return int(name[len(shape.block_prefix) + 1 :].split(".", 1)[0])


RULES: dict[str, Rule] = {
    "quant.rtn": _quant,
    "quant.gptq": _quant,
    "quant.awq": _quant,
    "prune.magnitude": _prune,
    "prune.wanda": _prune,
    "prune.sparsegpt": _prune,
    "lowrank.svd": _lowrank,
    "lowrank.asvd": _lowrank,
    "prune.blocks": _blocks,
    "quant.smoothquant": _same,  # rescales weights, stores them as they were
    "distill": _same,  # trains the weights it has
}


def estimate(shape: Shape, stages: list[TechniqueConfig]) -> Estimate | None:
    """Bytes and weight FLOPs of the artifact ``stages`` make from the base model; None when a
    stage has no rule here (or combines in a way no rule covers). A configuration the technique
    would refuse on this model (a grid that does not fit a layer) raises ``ConfigError``."""
    state: State | None = dict(shape.layers)
    for cfg in stages:
        rule = RULES.get(cfg.kind)
        if rule is None or state is None:
            return None
        state = rule(shape, state, cfg)
    if state is None:
        return None
    blocks_left = {_block(shape, n) for n in state} if state else set()
    tensor_bytes = shape.outside[0] + sum(lay.nbytes for lay in state.values())
    n_tensors = shape.outside[1] + sum(lay.n_tensors for lay in state.values())
    for b, (by, nt) in shape.block_other.items():
        if b in blocks_left or not shape.layers:
            tensor_bytes += by
            n_tensors += nt
    names = sum(len(n) + 8 for n in state) + 40 * shape.outside[1]
    header = n_tensors * HEADER_BYTES_PER_TENSOR + names
    flops = 2.0 * (sum(lay.macs for lay in state.values()) + shape.head_macs)
    return Estimate(
        int(tensor_bytes + header + shape.files_bytes), int(tensor_bytes + header), flops
    )
