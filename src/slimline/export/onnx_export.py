"""Write a (compressed) model as an ONNX graph that ONNX Runtime serves, quantized layers exactly.

The graph is built op by op (``onnx.helper``) from the model's own modules, not traced: each
family's forward is a few dozen lines below, every initializer is named after the torch tensor
it holds, and nothing depends on how transformers' caches and masks trace. Decoders take
``input_ids [batch, seq]`` and ``past_key_values.N.key/value [batch, kv_heads, past, head_dim]``
and return ``logits`` and ``present.N.key/value`` (past + seq positions): positions are
``past .. past + seq - 1`` and attention is causal, so no attention mask is needed (batches of
equal-length windows). Encoders (bert) take ``input_ids`` and ``attention_mask`` (token type 0:
single sentences, as sentence-transformers encodes them) and return ``last_hidden_state`` and
the mean-pooled, L2-normalised ``sentence_embedding``.

A ``QuantLinear`` of 4 or 8 bits with power-of-two groups (>= 16; per-channel = one block of the
next power of two) becomes ``com.microsoft.MatMulNBits`` holding exactly our codes, scales and
zero points (ORT's layout: ``B [N, blocks, block*bits/8]`` low nibble first, ``scales [N,
blocks]``, zero points packed the same way per row; none when symmetric, ORT's default zero
``2^(bits-1)`` being ours). Any other compressed layer is written as the fp32 weight our torch
model multiplies by; the record lists each layer's op. Then the file is loaded in ONNX Runtime
and compared with torch on fixed windows (``export/verify.py``); the record goes beside the file
as ``<file>.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from slimline.errors import ConfigError, IntegrityError

if TYPE_CHECKING:
    from slimline.quant.linear import QuantLinear

OPSET = 17
FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "opt", "bert")
_LLAMA_LIKE = ("llama", "mistral", "qwen2")
_NEG = float(np.finfo(np.float32).min)  # what HF's eager attention adds at masked positions
# 2 GB is protobuf's limit for one message: larger graphs keep their weights in FILE.data
EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass
class OnnxExport:
    """The written file and its record (ops per layer, verification); usable as a path."""

    path: Path
    record: dict[str, Any] = field(default_factory=dict)

    def __fspath__(self) -> str:
        return str(self.path)


# --- MatMulNBits: our codes in ORT's layout (also used by quant/ort_kernel.py) -----------------


def nbits_supported(layer: QuantLinear) -> bool:
    """True when MatMulNBits reproduces ``layer`` exactly: 4/8-bit integer codes with an integer
    zero (plain schemes, gguf-q4_0/q8_0), power-of-two groups >= 16 or per-channel."""
    s = layer.scheme
    if s.offset_form or s.bits not in (4, 8) or s.grid not in (None, "gguf-q4_0", "gguf-q8_0"):
        return False
    g = s.group_size
    return g is None or (g >= 16 and g & (g - 1) == 0)


def nbits_block(layer: QuantLinear) -> int:
    """MatMulNBits' block_size for ``layer``: its group, or per-channel one power-of-two block."""
    k = layer.in_features
    return max(layer.scheme.group_size or 1 << (k - 1).bit_length(), 16)


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes along the last axis, two 4-bit codes per byte, the first in the low nibble."""
    if bits == 8:
        return codes
    if codes.shape[-1] % 2:
        codes = torch.cat([codes, codes.new_zeros(*codes.shape[:-1], 1)], -1)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def nbits_tensors(layer: QuantLinear) -> dict[str, Any]:
    """``B``, ``scales`` and (asymmetric only) ``zero_points`` as numpy arrays in ORT's layout,
    plus the node attributes ``K``, ``N``, ``bits``, ``block_size``. A ragged last group is
    padded with zero codes, which ``K`` tells the kernel to ignore."""
    if not nbits_supported(layer):
        raise ConfigError(
            f"MatMulNBits cannot hold {layer.scheme.label()} weights exactly",
            "quantize to 4 or 8 bits with a power-of-two group >= 16 (or per-channel)",
        )
    bits, k, n = layer.scheme.bits, layer.in_features, layer.out_features
    block = nbits_block(layer)
    n_blocks = -(-k // block)
    codes = layer.codes()
    if n_blocks * block > k:
        codes = torch.cat([codes, codes.new_zeros(n, n_blocks * block - k)], 1)
    out: dict[str, Any] = {
        "B": _pack(codes.reshape(n, n_blocks, block), bits).contiguous().numpy(),
        "scales": layer.scale.float().reshape(n, n_blocks).contiguous().numpy(),
        "K": k,
        "N": n,
        "bits": bits,
        "block_size": block,
    }
    if not layer.scheme.symmetric:
        out["zero_points"] = _pack(layer.zero.to(torch.uint8), bits).contiguous().numpy()
    return out


# --- the graph builder ------------------------------------------------------------------------


class _Graph:
    """Nodes and named initializers; ``op`` returns its output name(s)."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: dict[str, Any] = {}
        self.n = 0
        self.layers: dict[str, dict[str, Any]] = {}
        self.gathered: set[str] = set()  # tables a token reads one row of (embeddings)

    def init(self, name: str, arr: np.ndarray | torch.Tensor) -> str:
        from onnx import numpy_helper

        if name not in self.inits:
            if isinstance(arr, torch.Tensor):
                arr = arr.detach().cpu().numpy()
            self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        return name

    def const(self, values: list[int] | list[float], dtype: Any = np.int64) -> str:
        arr = np.asarray(values, dtype=dtype)
        return self.init(f"const.{arr.dtype}.{'_'.join(map(str, arr.ravel().tolist()))}", arr)

    def op(self, kind: str, *inputs: str, outs: int = 1, domain: str = "", **attrs: Any) -> Any:
        from onnx import helper

        self.n += 1
        names = [f"{kind.lower()}_{self.n}" + (f"_{i}" if outs > 1 else "") for i in range(outs)]
        self.nodes.append(
            helper.make_node(
                kind, list(inputs), names, name=f"{kind}_{self.n}", domain=domain, **attrs
            )
        )
        return names if outs > 1 else names[0]

    # --- layers -------------------------------------------------------------------------------

    def linear(self, x: str, module: nn.Module, name: str) -> str:
        """``module(x)`` for any linear-like module: MatMulNBits on our codes where exact, else
        MatMul on the fp32 weight torch multiplies by; bias added after."""
        from slimline.quant.linear import QuantLinear

        bias = getattr(module, "bias", None)
        if isinstance(module, QuantLinear) and nbits_supported(module):
            if module.input_scale is not None:  # AWQ's unfolded scaling: y = W_q (x / s)
                x = self.op("Div", x, self.init(f"{name}.input_scale", module.input_scale.float()))
            t = nbits_tensors(module)
            ins = [
                x,
                self.init(f"{name}.qweight", t["B"]),
                self.init(f"{name}.scales", t["scales"]),
            ]
            if "zero_points" in t:
                ins.append(self.init(f"{name}.zero_points", t["zero_points"]))
            attrs = {a: t[a] for a in ("K", "N", "bits", "block_size")}
            y = self.op("MatMulNBits", *ins, domain="com.microsoft", accuracy_level=0, **attrs)
            self.layers[name] = {"op": "MatMulNBits", "exact": True, **attrs}
        else:
            if type(module).__name__ == "Conv1D":  # gpt2: weight already [in, out]
                w = module.weight.detach().float()
            else:
                from slimline.export.gguf_export import dense_weight

                w = dense_weight(module).T
            y = self.op("MatMul", x, self.init(f"{name}.weight_t", w.contiguous()))
            source = "quantized (dequantized fp32)" if isinstance(module, QuantLinear) else "dense"
            self.layers[name] = {"op": "MatMul", "source": source, "type": type(module).__name__}
        if isinstance(bias, torch.Tensor):
            y = self.op("Add", y, self.init(f"{name}.bias", bias.float()))
        return y

    def rms_norm(self, x: str, module: nn.Module, name: str) -> str:
        eps = float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))
        var = self.op("ReduceMean", self.op("Mul", x, x), axes=[-1], keepdims=1)
        inv = self.op(
            "Reciprocal", self.op("Sqrt", self.op("Add", var, self.const([eps], np.float32)))
        )
        return self.op(
            "Mul", self.init(f"{name}.weight", module.weight.float()), self.op("Mul", x, inv)
        )

    def layer_norm(self, x: str, module: nn.Module, name: str) -> str:
        c = module.weight.shape[0]
        b = module.bias if module.bias is not None else torch.zeros(c)
        w_, b_ = (
            self.init(f"{name}.weight", module.weight.float()),
            self.init(f"{name}.bias", b.float()),
        )
        return self.op("LayerNormalization", x, w_, b_, axis=-1, epsilon=float(module.eps))

    def act(self, x: str, fn: str) -> str:
        if fn in ("silu", "swish"):
            return self.op("Mul", x, self.op("Sigmoid", x))
        if fn == "relu":
            return self.op("Relu", x)
        if fn == "gelu":  # erf form
            e = self.op("Erf", self.op("Mul", x, self.const([1 / np.sqrt(2)], np.float32)))
            h = self.op("Mul", x, self.op("Add", e, self.const([1.0], np.float32)))
            return self.op("Mul", h, self.const([0.5], np.float32))
        if fn in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):  # tanh form
            x3 = self.op("Mul", self.op("Mul", x, x), x)
            inner = self.op("Add", x, self.op("Mul", x3, self.const([0.044715], np.float32)))
            t = self.op("Tanh", self.op("Mul", inner, self.const([np.sqrt(2 / np.pi)], np.float32)))
            h = self.op("Mul", x, self.op("Add", t, self.const([1.0], np.float32)))
            return self.op("Mul", h, self.const([0.5], np.float32))
        raise ConfigError(
            f"ONNX export has no activation {fn!r}", "use silu, relu, gelu or gelu_new models"
        )

    def heads(self, x: str, n: int, hd: int) -> str:
        """``[B, T, n*hd]`` -> ``[B, n, T, hd]``."""
        return self.op(
            "Transpose", self.op("Reshape", x, self.const([0, 0, n, hd])), perm=[0, 2, 1, 3]
        )

    def attend(
        self, q: str, k: str, v: str, n_rep: int, scale: float, mask: str, h: int, hd: int
    ) -> str:
        """Eager attention as HF computes it: softmax(q k^T * scale + mask) v, kv heads repeated
        ``n_rep`` times for grouped-query attention; returns ``[B, T, h*hd]``."""
        if n_rep > 1:
            rep = self.const([1, 1, n_rep, 1, 1])
            k, v = (
                self.op(
                    "Reshape",
                    self.op("Expand", self.op("Unsqueeze", t, self.const([2])), rep),
                    self.const([0, h, -1, hd]),
                )
                for t in (k, v)
            )
        s = self.op("MatMul", q, self.op("Transpose", k, perm=[0, 1, 3, 2]))
        s = self.op("Add", self.op("Mul", s, self.const([scale], np.float32)), mask)
        o = self.op("MatMul", self.op("Softmax", s, axis=-1), v)
        return self.op(
            "Reshape", self.op("Transpose", o, perm=[0, 2, 1, 3]), self.const([0, 0, h * hd])
        )


# --- decoders ---------------------------------------------------------------------------------


@dataclass
class _Positions:
    q: str  # int64 [T]: past .. past+T-1
    mask: str  # float [T, S]: 0 where a query may attend, float32 min elsewhere


def _positions(g: _Graph, past0: str, sliding_window: int | None) -> _Positions:
    p = g.op("Shape", past0, start=2, end=3)
    t = g.op("Shape", "input_ids", start=1, end=2)
    scalar = g.const([0])
    p0, s0 = g.op("Squeeze", p, scalar), g.op("Squeeze", g.op("Add", p, t), scalar)
    one, zero = g.op("Squeeze", g.const([1]), scalar), g.op("Squeeze", scalar, scalar)
    q = g.op("Range", p0, s0, one)
    k = g.op("Range", zero, s0, one)
    qc, kr = g.op("Unsqueeze", q, g.const([1])), g.op("Unsqueeze", k, scalar)
    masked = g.op("Greater", kr, qc)
    if sliding_window is not None:  # HF: a key is visible while q - k < window
        low = g.op("Sub", qc, g.const([sliding_window]))
        masked = g.op("Or", masked, g.op("LessOrEqual", kr, low))
    mask = g.op("Where", masked, g.const([_NEG], np.float32), g.const([0.0], np.float32))
    return _Positions(q, mask)


def _rope(g: _Graph, rotary: nn.Module, pos: str) -> tuple[str, str]:
    """cos/sin ``[T, head_dim]`` from the model's own ``inv_freq`` and attention scaling (rope
    scaling types that only change them — default, linear, llama3, yarn — come along)."""
    kind = getattr(rotary, "rope_type", "default")
    if kind in ("dynamic", "longrope"):
        raise ConfigError(
            f"ONNX export does not support {kind} rope scaling (it changes with the length)",
            "export a model with static rope scaling",
        )
    freqs = g.op(
        "Mul",
        g.op("Unsqueeze", g.op("Cast", pos, to=1), g.const([1])),
        g.init("rotary.inv_freq", rotary.inv_freq.float()),
    )
    emb = g.op("Concat", freqs, freqs, axis=-1)
    scale = float(getattr(rotary, "attention_scaling", 1.0))
    cos, sin = g.op("Cos", emb), g.op("Sin", emb)
    if scale != 1.0:
        c = g.const([scale], np.float32)
        cos, sin = g.op("Mul", cos, c), g.op("Mul", sin, c)
    return cos, sin


def _rotate(g: _Graph, x: str, cos: str, sin: str, hd: int) -> str:
    a, b = g.op("Split", x, g.const([hd // 2, hd // 2]), axis=-1, outs=2)
    rot = g.op("Concat", g.op("Neg", b), a, axis=-1)
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rot, sin))


def _decoder_io(g: _Graph, n_layers: int, kv: list[int], hd: int) -> tuple[list[Any], list[Any]]:
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outs = []
    for i in range(n_layers):
        for kv_name in ("key", "value"):
            shape = ["batch", kv[i], "past", hd]
            ins.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv_name}", 1, shape))
            shape = ["batch", kv[i], "total", hd]
            outs.append(helper.make_tensor_value_info(f"present.{i}.{kv_name}", 1, shape))
    return ins, outs


def _cache(g: _Graph, i: int, k: str, v: str) -> tuple[str, str]:
    """Append this step's k/v to the past and expose the result as ``present.i.*``."""
    out = []
    for name, t in (("key", k), ("value", v)):
        from onnx import helper

        full = f"present.{i}.{name}"
        g.nodes.append(
            helper.make_node(
                "Concat", [f"past_key_values.{i}.{name}", t], [full], axis=2, name=full
            )
        )
        out.append(full)
    return out[0], out[1]


def _head(g: _Graph, model: nn.Module, arch: Any, x: str) -> str:
    head = model.get_submodule(arch.lm_head)
    if arch.tied(model) and type(head) is nn.Linear:  # one copy of the matrix in the file
        w = g.init(f"{arch.embed}.weight", model.get_submodule(arch.embed).weight.float())
        g.gathered.discard(w)  # read in full as the head
        return g.op("MatMul", x, g.op("Transpose", w, perm=[1, 0]))
    return g.linear(x, head, arch.lm_head)


def _embedding(g: _Graph, model: nn.Module, path: str, ids: str) -> str:
    emb = model.get_submodule(path)
    if not isinstance(emb, nn.Embedding):
        raise ConfigError(
            f"ONNX export reads embeddings from nn.Embedding, not {type(emb).__name__} ({path})",
            "keep the embeddings unquantized for ONNX export",
        )
    g.gathered.add(f"{path}.weight")
    return g.op("Gather", g.init(f"{path}.weight", emb.weight.float()), ids)


def _llama(g: _Graph, model: nn.Module, arch: Any) -> dict[str, Any]:
    cfg = model.config
    blocks = arch.blocks(model)
    hd = arch.head_dim(cfg)
    kv = [blk.self_attn.k_proj.out_features // hd for blk in blocks]
    window = getattr(cfg, "sliding_window", None) if arch.model_type == "mistral" else None
    if arch.model_type == "qwen2" and getattr(cfg, "use_sliding_window", False):
        raise ConfigError(
            "ONNX export does not support qwen2's sliding window (use_sliding_window=True)",
            "set config.use_sliding_window = False if the model never exceeds the window, "
            "or export to GGUF",
        )
    pos = _positions(g, "past_key_values.0.key", window)
    cos, sin = _rope(g, model.get_submodule(arch.block_path.rsplit(".", 1)[0]).rotary_emb, pos.q)
    x = _embedding(g, model, arch.embed, "input_ids")
    for i, blk in enumerate(blocks):
        p = f"{arch.block_path}.{i}"
        at = blk.self_attn
        h_ = at.q_proj.out_features // hd
        a = g.rms_norm(x, blk.input_layernorm, f"{p}.input_layernorm")
        q, k, v = (
            g.heads(g.linear(a, getattr(at, f"{r}_proj"), f"{p}.self_attn.{r}_proj"), n, hd)
            for r, n in (("q", h_), ("k", kv[i]), ("v", kv[i]))
        )
        q, k = _rotate(g, q, cos, sin, hd), _rotate(g, k, cos, sin, hd)
        k, v = _cache(g, i, k, v)
        o = g.attend(q, k, v, h_ // kv[i], float(at.scaling), pos.mask, h_, hd)
        x = g.op("Add", x, g.linear(o, at.o_proj, f"{p}.self_attn.o_proj"))
        m = g.rms_norm(x, blk.post_attention_layernorm, f"{p}.post_attention_layernorm")
        mlp = blk.mlp
        gate = g.act(g.linear(m, mlp.gate_proj, f"{p}.mlp.gate_proj"), cfg.hidden_act)
        up = g.linear(m, mlp.up_proj, f"{p}.mlp.up_proj")
        x = g.op("Add", x, g.linear(g.op("Mul", gate, up), mlp.down_proj, f"{p}.mlp.down_proj"))
    x = g.rms_norm(x, model.get_submodule(arch.final_norm), arch.final_norm)
    return {"logits": _head(g, model, arch, x), "kv": kv, "hd": hd, "n_layers": len(blocks)}


def _gpt2(g: _Graph, model: nn.Module, arch: Any) -> dict[str, Any]:
    cfg = model.config
    blocks = arch.blocks(model)
    c, h_ = cfg.n_embd, cfg.n_head
    hd = c // h_
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        raise ConfigError(
            "ONNX export does not support gpt2's scale_attn_by_inverse_layer_idx",
            "export a gpt2 model without it (the default)",
        )
    pos = _positions(g, "past_key_values.0.key", None)
    x = _embedding(g, model, arch.embed, "input_ids")
    x = g.op("Add", x, _embedding(g, model, arch.pos_embed, pos.q))
    scale = hd**-0.5 if cfg.scale_attn_weights else 1.0
    for i, blk in enumerate(blocks):
        p = f"{arch.block_path}.{i}"
        a = g.layer_norm(x, blk.ln_1, f"{p}.ln_1")
        qkv = g.linear(a, blk.attn.c_attn, f"{p}.attn.c_attn")
        q, k, v = (
            g.heads(t, h_, hd) for t in g.op("Split", qkv, g.const([c, c, c]), axis=-1, outs=3)
        )
        k, v = _cache(g, i, k, v)
        o = g.attend(q, k, v, 1, scale, pos.mask, h_, hd)
        x = g.op("Add", x, g.linear(o, blk.attn.c_proj, f"{p}.attn.c_proj"))
        m = g.layer_norm(x, blk.ln_2, f"{p}.ln_2")
        m = g.act(g.linear(m, blk.mlp.c_fc, f"{p}.mlp.c_fc"), cfg.activation_function)
        x = g.op("Add", x, g.linear(m, blk.mlp.c_proj, f"{p}.mlp.c_proj"))
    x = g.layer_norm(x, model.get_submodule(arch.final_norm), arch.final_norm)
    return {
        "logits": _head(g, model, arch, x),
        "kv": [h_] * len(blocks),
        "hd": hd,
        "n_layers": len(blocks),
    }


def _opt(g: _Graph, model: nn.Module, arch: Any) -> dict[str, Any]:
    cfg = model.config
    dec = model.get_submodule(arch.block_path.rsplit(".", 1)[0])
    blocks = arch.blocks(model)
    hd = cfg.hidden_size // cfg.num_attention_heads
    pos = _positions(g, "past_key_values.0.key", None)
    x = _embedding(g, model, arch.embed, "input_ids")
    if dec.project_in is not None:
        x = g.linear(x, dec.project_in, "model.decoder.project_in")
    offset = int(getattr(dec.embed_positions, "offset", 2))  # OPT's positions start at 2
    x = g.op("Add", x, _embedding(g, model, arch.pos_embed, g.op("Add", pos.q, g.const([offset]))))
    pre = cfg.do_layer_norm_before
    kv = []
    for i, blk in enumerate(blocks):
        p = f"{arch.block_path}.{i}"
        at = blk.self_attn
        h_ = at.q_proj.out_features // hd
        kv.append(at.k_proj.out_features // hd)
        a = g.layer_norm(x, blk.self_attn_layer_norm, f"{p}.self_attn_layer_norm") if pre else x
        q, k, v = (
            g.heads(g.linear(a, getattr(at, f"{r}_proj"), f"{p}.self_attn.{r}_proj"), n, hd)
            for r, n in (("q", h_), ("k", kv[i]), ("v", kv[i]))
        )
        k, v = _cache(g, i, k, v)
        o = g.attend(q, k, v, h_ // kv[i], float(at.scaling), pos.mask, h_, hd)
        x = g.op("Add", x, g.linear(o, at.out_proj, f"{p}.self_attn.out_proj"))
        if not pre:
            x = g.layer_norm(x, blk.self_attn_layer_norm, f"{p}.self_attn_layer_norm")
        m = g.layer_norm(x, blk.final_layer_norm, f"{p}.final_layer_norm") if pre else x
        m = g.act(g.linear(m, blk.fc1, f"{p}.fc1"), cfg.activation_function)
        x = g.op("Add", x, g.linear(m, blk.fc2, f"{p}.fc2"))
        if not pre:
            x = g.layer_norm(x, blk.final_layer_norm, f"{p}.final_layer_norm")
    if dec.final_layer_norm is not None:
        x = g.layer_norm(x, dec.final_layer_norm, "model.decoder.final_layer_norm")
    if dec.project_out is not None:
        x = g.linear(x, dec.project_out, "model.decoder.project_out")
    return {"logits": _head(g, model, arch, x), "kv": kv, "hd": hd, "n_layers": len(blocks)}


def _bert(g: _Graph, model: nn.Module, arch: Any) -> dict[str, Any]:
    from onnx import TensorProto, helper

    cfg = model.config
    emb = model.embeddings
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise ConfigError(
            f"ONNX export supports absolute position embeddings only, not "
            f"{cfg.position_embedding_type}",
            "export a bert model with position_embedding_type='absolute' (MiniLM, BERT)",
        )
    t = g.op("Shape", "input_ids", start=1, end=2)
    zero = g.op("Squeeze", g.const([0]), g.const([0]))
    one = g.op("Squeeze", g.const([1]), g.const([0]))
    pos = g.op("Range", zero, g.op("Squeeze", t, g.const([0])), one)
    x = _embedding(g, model, arch.embed, "input_ids")
    x = g.op("Add", x, _embedding(g, model, arch.pos_embed, pos))
    x = g.op(
        "Add",
        x,
        g.init(
            "embeddings.token_type_embeddings.row0", emb.token_type_embeddings.weight[0].float()
        ),
    )
    x = g.layer_norm(x, emb.LayerNorm, "embeddings.LayerNorm")
    am = g.op("Cast", "attention_mask", to=1)  # [B, T] 1 = token, 0 = padding
    mask = g.op("Mul", g.op("Sub", g.const([1.0], np.float32), am), g.const([_NEG], np.float32))
    mask = g.op("Unsqueeze", mask, g.const([1, 2]))  # [B, 1, 1, T]
    blocks = arch.blocks(model)
    hd = cfg.hidden_size // cfg.num_attention_heads
    for i, blk in enumerate(blocks):
        p = f"{arch.block_path}.{i}"
        at = blk.attention.self
        h_ = at.query.out_features // hd
        q, k, v = (
            g.heads(g.linear(x, getattr(at, r), f"{p}.attention.self.{r}"), h_, hd)
            for r in ("query", "key", "value")
        )
        o = g.attend(q, k, v, 1, hd**-0.5, mask, h_, hd)
        out = blk.attention.output
        o = g.linear(o, out.dense, f"{p}.attention.output.dense")
        x = g.layer_norm(g.op("Add", o, x), out.LayerNorm, f"{p}.attention.output.LayerNorm")
        m = g.act(g.linear(x, blk.intermediate.dense, f"{p}.intermediate.dense"), cfg.hidden_act)
        m = g.linear(m, blk.output.dense, f"{p}.output.dense")
        x = g.layer_norm(g.op("Add", m, x), blk.output.LayerNorm, f"{p}.output.LayerNorm")
    g.nodes.append(
        helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state")
    )
    w = g.op("Unsqueeze", am, g.const([-1]))
    pooled = g.op(
        "Div",
        g.op("ReduceSum", g.op("Mul", x, w), g.const([1]), keepdims=0),
        g.op("Max", g.op("ReduceSum", w, g.const([1]), keepdims=0), g.const([1e-9], np.float32)),
    )
    g.nodes.append(
        helper.make_node(
            "LpNormalization", [pooled], ["sentence_embedding"], axis=-1, p=2, name="pool"
        )
    )
    c = cfg.hidden_size
    ins = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask")
    ]
    outs = [
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", c]),
        helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", c]),
    ]
    return {"inputs": ins, "outputs": outs, "n_layers": len(blocks)}


_BUILDERS = {"llama": _llama, "mistral": _llama, "qwen2": _llama, "gpt2": _gpt2, "opt": _opt}


def onnx_family(model: nn.Module) -> str:
    """The family a model is exported as; one ConfigError line for anything else."""
    from slimline.models.arch import get_arch

    arch = get_arch(model)
    mt = arch.model_type
    ok = mt in FAMILIES and (mt not in _LLAMA_LIKE or arch.family == "llama")
    if not ok:
        raise ConfigError(
            f"ONNX export supports {', '.join(FAMILIES)} models, not {mt}",
            "export it to GGUF (slimline export MODEL --format gguf) or a Hugging Face directory",
        )
    return mt


def build_onnx(model: nn.Module) -> tuple[Any, dict[str, Any]]:
    """The ONNX ``ModelProto`` for ``model`` and its record (family, inputs, ops per layer)."""
    from onnx import helper

    from slimline.models.arch import get_arch

    family = onnx_family(model)
    arch = get_arch(model)
    g = _Graph()
    with torch.no_grad():
        if family == "bert":
            io = _bert(g, model, arch)
            ins, outs = io["inputs"], io["outputs"]
        else:
            io = _BUILDERS[family](g, model, arch)
            ins, kv_outs = _decoder_io(g, io["n_layers"], io["kv"], io["hd"])
            from onnx import TensorProto

            vocab = int(model.get_input_embeddings().num_embeddings)
            g.nodes.append(helper.make_node("Identity", [io["logits"]], ["logits"], name="logits"))
            outs = [
                helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab]),
                *kv_outs,
            ]
    graph = helper.make_graph(
        g.nodes, f"slimline-{family}", ins, outs, initializer=list(g.inits.values())
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="slimline",
    )
    kind = "encoder" if family == "bert" else "causal-lm"
    max_pos = getattr(
        model.config, "max_position_embeddings", getattr(model.config, "n_positions", 0)
    )
    # weight bytes one decoded token reads (``engines.bound``): all but one row of each embedding
    per_token = sum(len(t.raw_data) for n, t in g.inits.items() if n not in g.gathered)
    meta = {
        "slimline.kind": kind,
        "slimline.family": family,
        "slimline.max_positions": str(max_pos),
        "slimline.bytes_per_token": str(per_token),
    }
    helper.set_model_props(proto, meta)
    ops = [v["op"] for v in g.layers.values()]
    record = {
        "format": "onnx",
        "opset": OPSET,
        "family": family,
        "kind": kind,
        "blocks": io["n_layers"],
        "inputs": [i.name for i in ins],
        "outputs": [o.name for o in outs],
        "op_counts": {op: ops.count(op) for op in sorted(set(ops))},
        "layers": g.layers,
    }
    return proto, record


def _save(proto: Any, path: Path) -> list[Path]:
    """Write ``proto`` at ``path`` (weights in ``path.data`` beyond protobuf's 2 GB); returns the
    files written."""
    import onnx

    size = sum(len(t.raw_data) for t in proto.graph.initializer)
    if size < EXTERNAL_DATA_BYTES:
        onnx.save_model(proto, str(path))
        return [path]
    data = path.with_name(path.name + ".data")
    onnx.save_model(proto, str(path), save_as_external_data=True, location=data.name)
    return [path, data]


ORT_TOLERANCE_KL = 1e-4  # see verify_onnx: fp32 graph vs torch on the same weights
ORT_TOLERANCE_TOP1 = 0.95


@torch.no_grad()
def verify_onnx_encoder(
    path: Path, lm_model: nn.Module, tokenizer: Any, threads: int
) -> dict[str, Any]:
    """Sentence embeddings from ORT vs torch on python-docs sentences (padded batch): min cosine
    and max |hidden state diff|; raises beyond cosine 0.9999."""
    from slimline.engines.onnxruntime_engine import OnnxEncoder
    from slimline.models import embed

    ids, mask = encoder_batch(tokenizer, int(lm_model.get_input_embeddings().num_embeddings))
    with OnnxEncoder(path, threads) as enc:
        got_h, got_e = enc.run(ids, mask)
        engine = enc.describe()
    ref_h = lm_model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    ref_e = embed(lm_model, ids, mask)
    cos = torch.nn.functional.cosine_similarity(ref_e, torch.from_numpy(got_e), dim=-1)
    valid = mask.bool()
    diff = (ref_h - torch.from_numpy(got_h)).abs()[valid]
    rec = {
        "verified": True,
        "engine": engine,
        "sentences": int(ids.shape[0]),
        "cosine_min": float(cos.min()),
        "max_abs_hidden_diff": float(diff.max()),
    }
    if rec["cosine_min"] < 0.9999:
        worst = int(cos.argmin())
        raise IntegrityError(
            f"ONNX Runtime's sentence embeddings for {path.name} differ from torch: cosine "
            f"{rec['cosine_min']:.6f} at sentence {worst}, max |hidden diff| {rec['max_abs_hidden_diff']:.3g}",
            "the conversion is wrong for this model; pass verify=False (--no-verify) to keep it unverified",
        )
    return rec


def encoder_batch(tokenizer: Any, vocab: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed padded batch: ``n`` python-docs lines through the tokenizer, or seeded ids."""
    if tokenizer is not None:
        from slimline.data import load_text

        lines = [ln.strip() for ln in load_text("python-docs").splitlines() if len(ln.strip()) > 40]
        enc = tokenizer(
            lines[:n], padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        return enc["input_ids"], enc["attention_mask"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n, 24), generator=gen)
    mask = torch.ones_like(ids)
    mask[n // 2 :, 16:] = 0  # half the batch padded: the mask must hold
    return ids, mask


def export_onnx(
    model: nn.Module,
    tokenizer: Any,
    out_path: str | os.PathLike[str],
    *,
    verify: bool = True,
    verify_windows: int = 2,
    verify_len: int = 64,
    threads: int = 2,
    tolerance: Any = None,
) -> OnnxExport:
    """Write ``model`` (llama, mistral, qwen2, gpt2, opt, bert) to ``out_path`` as ONNX plus
    ``<out>.json``.

    ``verify``: load the file in ONNX Runtime and compare with torch — a decoder's logits on
    ``verify_windows`` python-docs windows of ``verify_len`` tokens (KL, top-1, max |diff|,
    perplexity; beyond ``tolerance``, default ``Tolerance(kl=1e-4, top1=0.95)``, it raises), an
    encoder's sentence embeddings. A failure writes nothing. Written in a temp dir beside the
    target and renamed into place.
    """
    from slimline.artifact.atomic import clean_stale, new_temp_dir
    from slimline.export.gguf_export import _jsonable

    onnx_family(model)  # an unsupported family fails before anything is written
    out = Path(out_path)
    sidecar = out.with_name(out.name + ".json")
    clean_stale(out)
    tmp = new_temp_dir(out)
    try:
        proto, record = build_onnx(model)
        files = _save(proto, tmp / out.name)
        del proto
        record["bytes"] = sum(os.path.getsize(f) for f in files)
        if not verify:
            record["verify"] = {"verified": False, "reason": "verify=False"}
        elif record["kind"] == "encoder":
            record["verify"] = verify_onnx_encoder(tmp / out.name, model, tokenizer, threads)
        else:
            from slimline.engines.onnxruntime_engine import OnnxRuntimeEngine
            from slimline.export.verify import Tolerance, verify_in_engine

            tol = tolerance or Tolerance(kl=ORT_TOLERANCE_KL, top1=ORT_TOLERANCE_TOP1)
            with OnnxRuntimeEngine(tmp / out.name, threads=threads) as eng:
                record["verify"] = verify_in_engine(
                    eng,
                    model,
                    tokenizer,
                    windows=verify_windows,
                    seq_len=verify_len,
                    tolerance=tol,
                    label=out.name,
                    fix="the conversion is wrong for this model; pass verify=False (--no-verify) "
                    "to keep the file unverified",
                )
        (tmp / sidecar.name).write_text(json.dumps(_jsonable(record), indent=2, allow_nan=False))
        for f in files[1:]:
            os.replace(f, out.parent / f.name)
        os.replace(tmp / sidecar.name, sidecar)
        os.replace(files[0], out)  # the model file last: present means complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record["path"] = str(out)
    return OnnxExport(out, record)
