"""Write a (compressed) llama, qwen3, phi3 or gemma3 model as GGUF that llama.cpp serves, exactly.

A layer quantized on a GGUF grid (``grid: gguf-q4_0`` ...) is written as its own integer codes
and fp16 scales in that block type: no second rounding, and the file dequantizes bit for bit to
the weight our torch model multiplies by. A quantized layer with the block type's structure but
fp32 scales keeps its codes (scales rounded to fp16); anything else is requantized from its
dense weight. Every tensor's type and its error against our weight are listed in the record, so
nothing is re-rounded silently. Then the file is loaded in llama.cpp and its logits compared with
torch on fixed windows (``export/verify.py``); the record (with those numbers and the engine
version) is written beside the file as ``<file>.json``.

Dense weights (unquantized layers, or every layer of a dense model) are written at ``qtype``.
Tensors left unquantized on purpose (the token embedding, a tied head) get ``embed_type``:
``auto`` is what llama.cpp's own quantizer picks for them when the file is quantized — Q8_0
(llama.cpp picks Q6_K when the width is a multiple of 256; the gguf package cannot write Q6_K,
so Q8_0 it is) — and the dense type otherwise. Other compressed modules (bitmask-sparse,
low-rank) export through their dense weight, recovered by running the layer on the identity.
The tokenizer travels as GGUF's ``gpt2`` BPE vocabulary read from the HF ``tokenizer.json``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimline.errors import ConfigError, UnsupportedArchitectureError
from slimline.models.arch import Arch, get_arch

QTYPES = ("f32", "f16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1")
QUANTIZED = ("q8_0", "q5_0", "q5_1", "q4_0", "q4_1")
K_QUANTS = ("q6_k", "q5_k", "q4_k")  # written from our grids only (no gguf-package quantizer)
FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9}
FILE_TYPE |= {"q4_k": 15, "q5_k": 17, "q6_k": 18}  # llama_ftype MOSTLY_Q4_K_M, Q5_K_M, Q6_K
GRID_QTYPE = {f"gguf-{t}": t for t in (*QUANTIZED, *K_QUANTS)}
# HF model_type -> llama.cpp architecture (as llama.cpp's convert_hf_to_gguf.py names them).
# Only llama takes q/k rows permuted to its interleaved rotary layout; the others rotate NeoX
# style (halves), as HF does. qwen2: q/k/v biases; qwen3: + per-head q/k RMSNorms; gemma3:
# (1 + w) norms stored with the 1 added, post-branch norms, q/k norms, sliding/global layers,
# embeddings scaled by sqrt(hidden) (implied by the arch); phi3: fused qkv and gate_up.
GGUF_ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma3_text": "gemma3",
}
# the arch map's family each model type must have been described as (its layout)
_GGUF_FAMILY = {"llama": "llama", "mistral": "llama", "qwen2": "llama"}
_GGUF_FAMILY |= {"qwen3": "qwen3", "phi3": "phi3", "gemma3_text": "gemma3_text"}
# block norms: arch role -> GGUF tensor (gemma3's "ffn_norm" is its pre-feedforward norm)
_NORMS = {
    "attn_norm": "attn_norm",
    "q_norm": "attn_q_norm",
    "k_norm": "attn_k_norm",
    "attn_post_norm": "post_attention_norm",
    "mlp_norm": "ffn_norm",
    "mlp_post_norm": "post_ffw_norm",
}
# the block norms each llama.cpp architecture loads (no more, no fewer)
_ARCH_NORMS = {
    "llama": {"attn_norm", "mlp_norm"},
    "qwen2": {"attn_norm", "mlp_norm"},
    "qwen3": {"attn_norm", "mlp_norm", "q_norm", "k_norm"},
    "phi3": {"attn_norm", "mlp_norm"},
    "gemma3": set(_NORMS),
}
BLOCK = 32  # weights per block of the legacy types; K-quants use super-blocks of 256
QK_K = 256


def _block_of(qtype: str) -> int:
    return QK_K if qtype in K_QUANTS else BLOCK


@dataclass
class GgufExport:
    """The written file and its record (tensor types, errors, verification); usable as a path."""

    path: Path
    record: dict[str, Any] = field(default_factory=dict)

    def __fspath__(self) -> str:
        return str(self.path)


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
    # llama.cpp's rotary layout: pairs interleaved per head (convert_hf_to_gguf permute); it
    # reorders output rows only, so codes and per-row scales permute the same way
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _ggml(qtype: str) -> Any:
    import gguf

    return getattr(gguf.GGMLQuantizationType, qtype.upper())


def grid_blocks(
    codes: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, qtype: str
) -> np.ndarray:
    """Codes ``[out, in]`` (uint8) with per-32 scales ``[out, in/32]`` as GGUF ``qtype`` blocks
    (ggml-common.h: ``block_q8_0 {d; qs[32]}``, ``block_q4_0 {d; qs[16]}``, ``block_q4_1 {d; m;
    qs[16]}``, ``block_q5_0 {d; qh[4]; qs[16]}``, ``block_q5_1 {d; m; qh[4]; qs[16]}``; fp16
    ``d``/``m``, nibble ``j`` low and ``j+16`` high, bit 4 of code ``j`` in bit ``j`` of the
    little-endian ``qh``); K-quants in ``_q6_k_blocks`` / ``_qk_asym_blocks``. Scales are cast
    to fp16: exact when they are fp16 values already (a GGUF grid), rounded otherwise.
    ``zero``: the float minimum ``m`` (Q4_1, Q5_1) or offset ``-dmin * m_j`` (Q4_K, Q5_K)."""
    out, n = codes.shape
    if qtype == "q6_k":
        return _q6_k_blocks(codes, scale)
    if qtype in ("q4_k", "q5_k"):
        assert zero is not None
        return _qk_asym_blocks(codes, scale, zero, qtype)
    g = n // BLOCK
    c = codes.reshape(out, g, BLOCK)
    d = scale.astype(np.float16).reshape(out, g, 1).view(np.uint8)
    if qtype == "q8_0":
        parts = [d, (c.astype(np.int16) - 128).astype(np.int8).view(np.uint8)]
    elif qtype in ("q4_0", "q4_1", "q5_0", "q5_1"):
        lo = c & 0x0F
        qs = (lo[..., : BLOCK // 2] | (lo[..., BLOCK // 2 :] << 4)).astype(np.uint8)
        parts = [d, qs]
        if qtype.startswith("q5"):
            qh = np.packbits((c >> 4) & 1, axis=-1, bitorder="little")  # [out, g, 4]
            parts.insert(1, qh)
        if qtype.endswith("_1"):
            assert zero is not None
            parts.insert(1, zero.astype(np.float16).reshape(out, g, 1).view(np.uint8))
    else:
        raise ConfigError(f"no block layout for {qtype}", f"use one of {QUANTIZED}")
    return np.ascontiguousarray(np.concatenate(parts, axis=-1).reshape(out, -1))


def _q6_k_blocks(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``block_q6_K {ql[128]; qh[64]; int8 scales[16]; fp16 d}`` from codes ``[out, in]`` and
    group-of-16 scales ``d * sc_j``: ``d`` is recovered from the group whose ``sc`` is -128 (the
    largest scale, as the grid builds it), ``sc_j = scale_j / d``. When a scale was not built
    that way the blocks do not reproduce it, and the caller's exactness check reports so."""
    out, n = codes.shape
    nb = n // QK_K
    s = scale.astype(np.float32).reshape(out, nb, QK_K // 16)
    smax = np.take_along_axis(s, np.abs(s).argmax(-1)[..., None], -1)
    d16 = (smax / np.float32(-128)).astype(np.float16)
    d = d16.astype(np.float32)
    sc = np.rint(s / np.where(d == 0, np.float32(1), d)).clip(-128, 127).astype(np.int8)
    c = codes.reshape(out, nb, QK_K).astype(np.uint8)
    lo4, hi2 = c & 0x0F, c >> 4
    ql = np.concatenate(
        [
            lo4[..., h * 128 : h * 128 + 64] | (lo4[..., h * 128 + 64 : h * 128 + 128] << 4)
            for h in (0, 1)
        ],
        -1,
    )
    qh = np.concatenate(
        [
            sum(hi2[..., h * 128 + 32 * k : h * 128 + 32 * (k + 1)] << (2 * k) for k in range(4))
            for h in (0, 1)
        ],
        -1,
    ).astype(np.uint8)
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), d16.view(np.uint8)], -1)
    return np.ascontiguousarray(blocks.reshape(out, nb * 210))


def _qk_asym_blocks(
    codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, qtype: str
) -> np.ndarray:
    """``block_q4_K {d; dmin; scales[12]; qs[128]}`` / ``block_q5_K {d; dmin; scales[12];
    qh[32]; qs[128]}``: 6-bit ``sc``/``m`` packed as ggml's get_scale_min_k4 reads them, the
    largest group scale (minimum) at 63 gives ``d`` (``dmin``)."""
    out, n = codes.shape
    nb = n // QK_K
    s = scale.astype(np.float32).reshape(out, nb, 8)
    mn = -zero.astype(np.float32).reshape(out, nb, 8)

    def factor(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d16 = (v.max(-1, keepdims=True) / np.float32(63)).astype(np.float16)
        d = d16.astype(np.float32)
        q = np.rint(v / np.where(d == 0, np.float32(1), d)).clip(0, 63).astype(np.uint8)
        return d16, q

    d16, sc = factor(s)
    dmin16, m = factor(mn)
    packed = np.concatenate(
        [
            (sc[..., :4] & 0x3F) | ((sc[..., 4:] >> 4) << 6),
            (m[..., :4] & 0x3F) | ((m[..., 4:] >> 4) << 6),
            (sc[..., 4:] & 0x0F) | ((m[..., 4:] & 0x0F) << 4),
        ],
        -1,
    ).astype(np.uint8)
    c = codes.reshape(out, nb, 8, 32).astype(np.uint8)
    lo4 = c & 0x0F
    qs = (lo4[..., 0::2, :] | (lo4[..., 1::2, :] << 4)).reshape(out, nb, 128)
    parts = [d16.view(np.uint8), dmin16.view(np.uint8), packed]
    if qtype == "q5_k":  # bit k of qh[b] is the high bit of group k's value b
        hi = (c >> 4) & 1
        parts.append(sum(hi[..., k, :] << k for k in range(8)).astype(np.uint8))
    parts.append(qs)
    blocks = np.concatenate(parts, -1)
    return np.ascontiguousarray(blocks.reshape(out, -1))


def _native(module: nn.Module) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(qtype, codes, scales, m) when a quantized layer has a block type's structure: 8-bit
    symmetric -> Q8_0, 4-bit symmetric -> Q4_0, 4-bit asymmetric -> Q4_1, groups of 32."""
    from slimline.quant.linear import QuantLinear

    if not isinstance(module, QuantLinear) or module.input_scale is not None:
        return None
    sch = module.scheme
    if sch.grid is not None:  # the grid validated the layer's width already
        qtype = GRID_QTYPE[sch.grid]
    elif sch.group_size != BLOCK or module.in_features % BLOCK:
        return None
    elif sch.bits == 8 and sch.symmetric:
        qtype = "q8_0"
    elif sch.bits in (4, 5):
        qtype = f"q{sch.bits}_{0 if sch.symmetric else 1}"
    else:
        return None
    codes = module.codes().numpy()
    scale = module.scale.detach().float().numpy()
    m = None
    if not sch.symmetric:  # w = (q - z) s = q s + (-z s): Q4_1's minimum m = -z s
        z = module.zero_points().float()
        m = (z if sch.offset_form else -z * module.scale.float()).numpy()
    return qtype, codes, scale, m


def _fallback_type(module: nn.Module, qtype: str | None) -> str:
    """Block type for a quantized layer whose grid cannot map: the user's, else by bit width."""
    if qtype in QUANTIZED:
        return qtype
    sch = getattr(module, "scheme", None)
    if sch is None or sch.bits >= 8:
        return "q8_0"
    b = 5 if sch.bits == 5 else 4
    return f"q{b}_{0 if sch.symmetric else 1}"


class _Writer:
    """Collects tensors with their types and errors against the weights torch multiplies by."""

    def __init__(self, writer: Any):
        self.w = writer
        self.types: dict[str, str] = {}
        self.errors: dict[str, dict[str, Any]] = {}

    def plain(self, name: str, arr: np.ndarray) -> None:
        """1-D tensors (norms, biases) always f32, as llama.cpp's converter writes them."""
        self.w.add_tensor(name, arr.astype(np.float32))
        self.types[name] = "f32"

    def matrix(
        self,
        name: str,
        ref: np.ndarray,
        qtype: str,
        *,
        blocks: np.ndarray | None = None,
        source: str = "dense",
    ) -> np.ndarray:
        """Write ``ref`` (our fp32 weight) at ``qtype``, or the given ``blocks``; record the error
        of what the file holds against ``ref``; return what the file holds (fp32)."""
        from gguf import quants

        block = _block_of(qtype)
        if qtype not in ("f32", "f16") and ref.shape[-1] % block:
            qtype, blocks, source = "f16", None, f"{source}; rows not a multiple of {block}"
        if qtype == "f32":
            self.w.add_tensor(name, ref.astype(np.float32))
            held = ref.astype(np.float32)
        elif qtype == "f16":
            data = ref.astype(np.float16)
            self.w.add_tensor(name, data)
            held = data.astype(np.float32)
        else:
            q = _ggml(qtype)
            if blocks is None:
                blocks = quants.quantize(ref.astype(np.float32), q)
            self.w.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=q)
            held = quants.dequantize(blocks, q).reshape(ref.shape)
        diff = np.abs(held.astype(np.float64) - ref.astype(np.float64))
        exact = bool(np.array_equal(held, ref.astype(np.float32)))
        noise = float(np.sqrt((diff**2).sum()))
        signal = float(np.sqrt((ref.astype(np.float64) ** 2).sum()))
        self.types[name] = qtype
        self.errors[name] = {
            "type": qtype,
            "source": source,
            "exact": exact,
            "max_abs_err": float(diff.max()) if diff.size else 0.0,
            "sqnr_db": (
                math.inf if noise == 0 else round(20 * math.log10(max(signal, 1e-30) / noise), 2)
            ),
        }
        return held


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


def _check_types(qtype: str | None, embed_type: str) -> None:
    if qtype is not None and qtype not in QTYPES:
        raise ConfigError(f"unknown GGUF type {qtype!r}", f"use one of: {', '.join(QTYPES)}")
    if embed_type != "auto" and embed_type not in QTYPES:
        raise ConfigError(
            f"unknown GGUF type {embed_type!r} for the embedding",
            f"use auto or one of: {', '.join(QTYPES)}",
        )


def _write(
    model: nn.Module,
    tokenizer: Any,
    path: str,
    *,
    qtype: str | None,
    embed_type: str,
    pre: str,
    name: str | None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Write the GGUF at ``path``; returns (record, {torch weight name: file weight}) for the
    tensors whose file values differ from the torch model's."""
    import gguf

    arch = get_arch(model)
    cfg = model.config
    gguf_arch = gguf_arch_for(arch)
    _check_config(arch, cfg, gguf_arch)
    dense_type = qtype or "f16"
    n_head, n_kv = arch.n_heads(cfg), arch.n_kv_heads(cfg)
    blocks = arch.blocks(model)
    prefix = arch.block_prefix(model)
    w = gguf.GGUFWriter(path, gguf_arch)
    out = _Writer(w)
    w.add_name(name or getattr(cfg, "name_or_path", "") or "slimline-model")
    _hparams(w, arch, cfg, gguf_arch, len(blocks))
    w.add_vocab_size(int(cfg.vocab_size))
    _tokenizer_fields(tokenizer, w, pre)

    if "qkv" in arch.roles:  # phi3: fused qkv rows [q; k; v], fused gate_up rows [gate; up]
        roles = {"qkv": "attn_qkv", "o": "attn_output"}
        roles.update({arch.roles["mlp_in"][0]: "ffn_up", "mlp_out": "ffn_down"})
    else:
        roles = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output"}
        gate, up = arch.roles["mlp_in"]
        roles.update({gate: "ffn_gate", up: "ffn_up", "mlp_out": "ffn_down"})
    linears: list[tuple[str, str, nn.Module, int | None]] = []  # gguf name, torch name, module
    for i, blk in enumerate(blocks):
        for role, gname in roles.items():
            rel = arch.roles.get(role, role)
            heads = {"q": n_head, "k": n_kv}.get(role) if gguf_arch == "llama" else None
            linears.append(
                (f"blk.{i}.{gname}", f"{prefix}.{i}.{rel}", blk.get_submodule(rel), heads)
            )
    head = None
    if arch.lm_head and not arch.tied(model):
        head = model.get_submodule(arch.lm_head)
        linears.append(("output", arch.lm_head, head, None))

    # what each linear becomes: its own blocks, or a requantized / dense weight
    plan = []
    for gname, tname, mod, heads in linears:
        ref = dense_weight(mod).numpy()
        nat = _native(mod)
        if heads:
            ref = _permute_qk(ref, heads)
        if nat is not None:
            qt, codes, scale, m = nat
            if heads:
                codes, scale = _permute_qk(codes, heads), _permute_qk(scale, heads)
                m = None if m is None else _permute_qk(m, heads)
            src = "grid" if getattr(mod.scheme, "grid", None) else "codes kept, scales to fp16"
            plan.append((gname, tname, mod, heads, ref, qt, grid_blocks(codes, scale, m, qt), src))
        elif hasattr(mod, "scheme"):
            qt = _fallback_type(mod, qtype)
            plan.append(
                (gname, tname, mod, heads, ref, qt, None, f"requantized from {mod.scheme.label()}")
            )
        else:
            plan.append((gname, tname, mod, heads, ref, dense_type, None, "dense"))
    any_quant = any(p[5] in (*QUANTIZED, *K_QUANTS) for p in plan if p[0] != "output")
    emb_type = embed_type if embed_type != "auto" else ("q8_0" if any_quant else dense_type)
    if plan and plan[-1][0] == "output" and plan[-1][7] == "dense":  # an unquantized head
        plan[-1] = (*plan[-1][:5], emb_type, None, "unquantized")
    counts = Counter(p[5] for p in plan)
    w.add_file_type(FILE_TYPE[counts.most_common(1)[0][0]] if counts else FILE_TYPE[dense_type])

    differ: dict[str, np.ndarray] = {}
    emb = model.get_submodule(arch.embed).weight.detach().float().numpy()
    held = out.matrix("token_embd.weight", emb, emb_type, source="unquantized")
    if not out.errors["token_embd.weight"]["exact"]:
        differ[arch.embed + ".weight"] = held
    by_block: dict[int, list[Any]] = {}
    for p in plan:
        if p[0].startswith("blk."):
            by_block.setdefault(int(p[0].split(".")[1]), []).append(p)
    shift = arch.norm_offset  # HF's x * (1 + w): llama.cpp multiplies by the stored w + 1
    for i, blk in enumerate(blocks):
        for role, gname in _NORMS.items():
            if role in arch.roles:
                vec = _vec(blk.get_submodule(arch.roles[role])) + np.float32(shift)
                out.plain(f"blk.{i}.{gname}.weight", vec)
        for p in by_block.get(i, []):
            _linear(out, differ, *p)
    final = _vec(model.get_submodule(arch.final_norm)) + np.float32(shift)
    out.plain("output_norm.weight", final)
    for p in plan:
        if p[0] == "output":
            _linear(out, differ, *p)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    exact = [n for n, e in out.errors.items() if e["exact"]]
    requant = {n: e for n, e in out.errors.items() if e["source"].startswith("requantized")}
    record = {
        "format": "gguf",
        "architecture": gguf_arch,
        "file_type": counts.most_common(1)[0][0] if counts else dense_type,
        "dense_type": dense_type,
        "embed_type": emb_type,
        "tensor_types": out.types,
        "type_counts": dict(Counter(out.types.values())),
        "exact": sorted(exact),
        "requantized": requant,
        "errors": out.errors,
    }
    return record, differ


def _vec(module: nn.Module) -> np.ndarray:
    return module.weight.detach().float().numpy()


def gguf_arch_for(arch: Arch) -> str:
    """The llama.cpp architecture a model of this layout is written as; the exporter's family
    condition (``slimline.models.families`` asks it too). Raises for anything else."""
    gguf_arch = GGUF_ARCH.get(arch.model_type)
    if gguf_arch is None or arch.family != _GGUF_FAMILY[arch.model_type]:
        raise UnsupportedArchitectureError(
            f"GGUF export supports {', '.join(GGUF_ARCH)} models, not {arch.model_type}",
            "export to a Hugging Face directory instead (slimline quantize/prune write one)",
        )
    norms = {r for r in _NORMS if r in arch.roles}
    if norms != _ARCH_NORMS[gguf_arch] or ("qkv" in arch.roles) != (gguf_arch == "phi3"):
        raise UnsupportedArchitectureError(
            f"this {arch.model_type} model's layout (norms {sorted(norms)}, "
            f"{'fused' if 'qkv' in arch.roles else 'separate'} q/k/v) is not the one llama.cpp's "
            f"{gguf_arch} architecture loads",
            "export to a Hugging Face directory instead",
        )
    return gguf_arch


def _rope(cfg: Any, layer_type: str | None = None) -> dict[str, Any]:
    """HF rope parameters (transformers 5 ``rope_parameters``, per layer type for Gemma 3)."""
    rope = getattr(cfg, "rope_parameters", None) or {}
    if layer_type is not None and isinstance(rope.get(layer_type), dict):
        rope = rope[layer_type]
    if "rope_theta" not in rope and getattr(cfg, "rope_theta", None) is not None:
        rope = {**rope, "rope_theta": cfg.rope_theta}
    scaling = getattr(cfg, "rope_scaling", None)
    if scaling and "rope_type" not in rope:
        rope = {**rope, **scaling}
    return rope


def _check_config(arch: Arch, cfg: Any, gguf_arch: str) -> None:
    """Refuse config switches that llama.cpp's architecture would silently not reproduce."""

    def refuse(what: str) -> None:
        raise UnsupportedArchitectureError(
            f"GGUF export of {arch.model_type}: {what}",
            "export to a Hugging Face directory instead, or serve the model with torch",
        )

    if gguf_arch in ("llama", "qwen2"):  # written as before: plain rotary from rope_theta
        return
    types = [None] if gguf_arch != "gemma3" else ["full_attention", "sliding_attention"]
    for lt in types:
        rope = _rope(cfg, lt)
        if rope.get("rope_type", "default") != "default":
            refuse(
                f"rope scaling {rope.get('rope_type')!r} is not written (only plain rotary "
                "embeddings are)"
            )
        if float(rope.get("partial_rotary_factor", 1.0)) != 1.0 and gguf_arch != "phi3":
            refuse("partial rotary embeddings are not written for this architecture")
    if gguf_arch == "gemma3":
        # attn_logit_softcapping is not written: llama.cpp's gemma3 has none, and HF's Gemma 3
        # attention never passes it on either (a Gemma 2 leftover; the checkpoints set None)
        hd, n_layer = arch.head_dim(cfg), arch.n_blocks(cfg)
        # llama.cpp scales queries by 1/sqrt(head_dim), by 1/sqrt(hidden/heads) at 62 layers (27B)
        want = arch.hidden(cfg) // arch.n_heads(cfg) if n_layer == 62 else hd
        if float(getattr(cfg, "query_pre_attn_scalar", None) or hd) != float(want):
            refuse(
                f"query_pre_attn_scalar {cfg.query_pre_attn_scalar} differs from the {want} "
                "llama.cpp's gemma3 implies for this size"
            )
        act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
        if act != "gelu_pytorch_tanh":
            refuse(f"activation {act!r}; llama.cpp's gemma3 runs tanh-approximated GELU")
    elif gguf_arch in ("qwen3", "phi3"):
        heads_width = arch.n_heads(cfg) * arch.head_dim(cfg)
        if gguf_arch == "phi3" and heads_width != arch.hidden(cfg):
            # llama.cpp's phi3 cuts the fused qkv rows at multiples of the hidden width
            refuse(f"query width {heads_width} differs from the hidden width {arch.hidden(cfg)}")
        act = getattr(cfg, "hidden_act", "silu")
        if act != "silu":
            refuse(f"activation {act!r}; llama.cpp's {gguf_arch} runs SiLU (SwiGLU)")
    if gguf_arch in ("qwen3", "phi3", "gemma3") and arch.notes.get("bias"):
        refuse(f"biases on {'/'.join(arch.notes['bias'])}; llama.cpp's {gguf_arch} loads none")


def _hparams(w: Any, arch: Arch, cfg: Any, gguf_arch: str, n_blocks: int) -> None:
    """The architecture's metadata keys, as convert_hf_to_gguf.py writes them."""
    hd = arch.head_dim(cfg)
    w.add_block_count(n_blocks)
    w.add_context_length(int(getattr(cfg, "max_position_embeddings", 2048)))
    w.add_embedding_length(arch.hidden(cfg))
    w.add_feed_forward_length(arch.intermediate(cfg))
    w.add_head_count(arch.n_heads(cfg))
    w.add_head_count_kv(arch.n_kv_heads(cfg))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    if gguf_arch == "gemma3":
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_freq_base(float(_rope(cfg, "full_attention").get("rope_theta", 1e6)))
        windows = [arch.sliding_window(cfg, i) for i in range(n_blocks)]
        if any(windows):
            w.add_sliding_window(int(next(x for x in windows if x)))
            w.add_sliding_window_pattern([x is not None for x in windows])
            local = _rope(cfg, "sliding_attention").get("rope_theta", 10000.0)
            w.add_rope_freq_base_swa(float(local))
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            w.add_final_logit_softcapping(float(cap))
        return
    rope = _rope(cfg)
    w.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if gguf_arch == "phi3":
        w.add_rope_dimension_count(int(hd * float(rope.get("partial_rotary_factor", 1.0))))
        window = getattr(cfg, "sliding_window", None)
        if window:
            w.add_sliding_window(int(window))
        return
    w.add_rope_dimension_count(hd)
    if gguf_arch == "qwen3" or hd != arch.hidden(cfg) // arch.n_heads(cfg):
        w.add_key_length(hd)
        w.add_value_length(hd)


def _linear(
    out: _Writer,
    differ: dict[str, np.ndarray],
    gname: str,
    tname: str,
    mod: nn.Module,
    heads: int | None,
    ref: np.ndarray,
    qt: str,
    blocks: np.ndarray | None,
    src: str,
) -> None:
    held = out.matrix(f"{gname}.weight", ref, qt, blocks=blocks, source=src)
    if not out.errors[f"{gname}.weight"]["exact"]:
        differ[tname] = _unpermute_qk(held, heads) if heads else held  # torch's row order
    bias = getattr(mod, "bias", None)
    if isinstance(bias, torch.Tensor):
        b = bias.detach().float().numpy()
        out.plain(f"{gname}.bias", _permute_qk(b, heads) if heads else b)


def _unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def file_weight_model(model: nn.Module, differ: dict[str, np.ndarray]) -> nn.Module:
    """A copy of ``model`` holding exactly the weights the file holds (requantized and
    fp16-rounded tensors replaced): what the engine must reproduce, tensor for tensor."""
    if not differ:
        return model
    ref = copy.deepcopy(model)
    for tname, w in differ.items():
        t = torch.from_numpy(np.ascontiguousarray(w)).float()
        if tname.endswith(".weight"):  # the embedding (a tied head shares the Parameter)
            ref.get_submodule(tname.rsplit(".", 1)[0]).weight.data = t
            continue
        mod = ref.get_submodule(tname)
        lin = nn.Linear(t.shape[1], t.shape[0], bias=getattr(mod, "bias", None) is not None)
        lin.weight.data = t
        if lin.bias is not None:
            lin.bias.data = mod.bias.detach().float().clone()
        from slimline.core import set_submodule

        set_submodule(ref, tname, lin)
    return ref.eval()


def export_gguf(
    model: nn.Module,
    tokenizer: Any,
    out_path: str | os.PathLike[str],
    *,
    qtype: str | None = None,
    embed_type: str = "auto",
    pre: str = "smollm",
    name: str | None = None,
    verify: bool = True,
    verify_windows: int = 2,
    verify_len: int = 64,
    threads: int = 2,
    tolerance: Any = None,
) -> GgufExport:
    """Write ``model`` (llama, mistral, qwen2, qwen3, phi3, gemma3_text) to ``out_path`` as
    GGUF plus ``<out>.json``.

    ``qtype``: type of dense weights (default f16), and of quantized layers whose grid cannot map
    (default: the nearest block type). ``verify``: load the file in llama.cpp and compare its
    logits with torch on ``verify_windows`` python-docs windows of ``verify_len`` tokens; a
    mismatch beyond ``tolerance`` (``export.verify.Tolerance``) raises and writes nothing.
    Atomic: temp files beside the target, renamed at the end.
    """
    _check_types(qtype, embed_type)
    get_arch(model)  # an unknown family fails before anything is written
    out = Path(out_path)
    sidecar = out.with_name(out.name + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmps = []
    try:
        for _ in range(2):
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
            os.close(fd)
            tmps.append(tmp)
        with torch.no_grad():
            record, differ = _write(
                model, tokenizer, tmps[0], qtype=qtype, embed_type=embed_type, pre=pre, name=name
            )
        record["bytes"] = os.path.getsize(tmps[0])
        if verify:
            from slimline.export.verify import Tolerance, verify_gguf

            record["verify"] = verify_gguf(
                tmps[0],
                model,
                tokenizer,
                reference=file_weight_model(model, differ),
                windows=verify_windows,
                seq_len=verify_len,
                threads=threads,
                tolerance=tolerance or Tolerance(),
                label=out.name,
            )
        else:
            record["verify"] = {"verified": False, "reason": "verify=False"}
        with open(tmps[1], "w", encoding="utf-8") as f:
            json.dump(_jsonable(record), f, indent=2, allow_nan=False)
        os.replace(tmps[1], sidecar)
        os.replace(tmps[0], out)
    finally:
        for t in tmps:
            if os.path.exists(t):
                os.unlink(t)
    record["path"] = str(out)
    return GgufExport(out, record)


def _jsonable(x: Any) -> Any:
    """Non-finite floats as strings (``"inf"``), as the artifact manifest stores them."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x
