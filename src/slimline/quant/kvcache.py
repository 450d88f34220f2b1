"""int8 / int4 KV cache for HF ``generate``: the memory that grows with context, quantized.

At long context the key/value cache grows to rival or exceed the weights: SmolLM2-135M holds
30 blocks x 2 x 3 kv-heads x 64 dims x 4 bytes = 46 KB per token in fp32, i.e. 189 MB at 4096
tokens and 1.5 GB at 32k, against 538 MB of weights (and per sequence: a batch multiplies it). ``QuantizedKVCache`` stores every cached token asymmetrically
quantized per token, per head, per group of ``group_size`` channels (default: the whole head
for int8, 32 channels for int4) with an fp16 scale and minimum per group (KIVI, Liu et al. 2024, quantizes values per token the
same way; per-token keys stay appendable, so no token is ever re-quantized). The last
``residual_length`` tokens can stay in full precision, as in KIVI, for int4.

It is a transformers ``Cache`` made of ``QuantizedKVLayer`` (a ``DynamicLayer`` whose fp buffer
is the residual window), so ``model.generate(..., past_key_values=QuantizedKVCache(cfg, bits=8))``
works unchanged. Attention still runs in fp32 on dequantized states: this saves memory, not time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from slimline.errors import ConfigError
from slimline.models.kv import with_cache
from slimline.quant.observers import check_finite

_META = torch.float16  # scale and minimum per group: 4 bytes per group of 64 values


def quantize_groups(
    x: torch.Tensor, bits: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric per-group quantization along the last dim: (codes, scale, minimum).

    Codes are uint8; for 4 bits two codes share a byte (low nibble = even channel), for 2 bits
    four (lowest bits = first channel). ``scale`` and
    ``minimum`` are fp16 [..., D / group_size]; the codes are computed against the fp16-rounded
    values, so dequantization is consistent with what was stored.
    """
    *lead, D = x.shape
    g = x.float().reshape(*lead, D // group_size, group_size)
    qmax = 2**bits - 1
    lo = g.amin(-1)
    scale = ((g.amax(-1) - lo) / qmax).clamp(min=1e-5)
    lo16, scale16 = lo.to(_META), scale.to(_META)
    q = torch.round((g - lo16.float()[..., None]) / scale16.float()[..., None]).clamp(0, qmax)
    q = q.to(torch.uint8).reshape(*lead, D)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    elif bits == 2:
        q = q[..., 0::4] | (q[..., 1::4] << 2) | (q[..., 2::4] << 4) | (q[..., 3::4] << 6)
    return q, scale16, lo16


def dequantize_groups(
    q: torch.Tensor,
    scale: torch.Tensor,
    lo: torch.Tensor,
    bits: int,
    group_size: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Inverse of ``quantize_groups``."""
    if bits == 4:
        q = torch.stack([q & 0xF, q >> 4], dim=-1).flatten(-2)
    elif bits == 2:
        q = torch.stack([(q >> s) & 0x3 for s in (0, 2, 4, 6)], dim=-1).flatten(-2)
    *lead, D = q.shape
    g = q.float().reshape(*lead, D // group_size, group_size)
    x = g * scale.float()[..., None] + lo.float()[..., None]
    return x.reshape(*lead, D).to(dtype)


def _check_kv_settings(bits: int, group_size: int | None, residual_length: int) -> None:
    if bits not in (8, 4, 2):
        raise ConfigError(
            f"KV-cache bits must be 8 or 4 (2 only as a deliberately crude cache), got {bits}",
            "use bits=8 (near lossless) or 4",
        )
    if group_size is not None and group_size <= 0:
        raise ConfigError(
            f"KV-cache group_size must be positive, got {group_size}",
            "use None (whole head) or 32/64",
        )
    if residual_length < 0:
        raise ConfigError(
            f"residual_length must be >= 0, got {residual_length}", "use 0, or e.g. 32 for int4"
        )


class QuantizedKVLayer(DynamicLayer):
    """One block's cache: quantized tokens plus an fp window of the most recent ones.

    ``self.keys``/``self.values`` (the ``DynamicLayer`` buffers) hold the fp residual window;
    ``_qk``/``_qv`` hold (codes, scale, minimum) of all older tokens, concatenated on dim -2.
    """

    def __init__(self, bits: int = 8, group_size: int | None = None, residual_length: int = 0):
        super().__init__()
        _check_kv_settings(bits, group_size, residual_length)
        self.bits = bits
        self.group_size = group_size
        self.residual_length = residual_length
        self.cumulative_length = 0
        self._qk: tuple[torch.Tensor, ...] | None = None
        self._qv: tuple[torch.Tensor, ...] | None = None

    # The layer owns every piece of state it reads. transformers' cache layers change their private
    # attributes between releases (5.24 stopped setting ``DynamicLayer.dtype``, which broke us), so
    # nothing below relies on what the base class happens to set (the dequantization dtype comes
    # from the incoming states): only on the Cache-layer methods
    # that transformers calls (update, get_seq_length, get_mask_sizes, crop, reset, ...).
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys = key_states.new_empty((*key_states.shape[:-2], 0, key_states.shape[-1]))
        self.values = value_states.new_empty((*value_states.shape[:-2], 0, value_states.shape[-1]))
        self.is_initialized = True

    def _group(self, D: int) -> int:
        # auto: one group per head for int8; 32 channels for int4, where SmolLM2's rotary key
        # outliers make one 4-bit grid per head too coarse (measured: teacher-forced top-1 agreement)
        g = self.group_size or (32 if self.bits <= 4 and D % 32 == 0 else D)
        if D % g or (self.bits == 4 and g % 2) or (self.bits == 2 and g % 4):
            raise ConfigError(
                f"KV group_size {g} does not divide head_dim {D} (int4/int2 also need a group "
                "divisible by 2/4)",
                f"use a divisor of {D}, or group_size=None for one group per head",
            )
        return g

    def _push(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Quantize tokens [B, H, t, D] and append them to the quantized store."""
        check_finite(k, "key states")
        check_finite(v, "value states")
        gs = self._group(k.shape[-1])
        qk = quantize_groups(k, self.bits, gs)
        qv = quantize_groups(v, self.bits, gs)
        if self._qk is None:
            self._qk, self._qv = qk, qv
        else:
            self._qk = tuple(torch.cat([a, b], dim=-2) for a, b in zip(self._qk, qk, strict=True))
            self._qv = tuple(torch.cat([a, b], dim=-2) for a, b in zip(self._qv, qv, strict=True))

    def _dequant(self, q: tuple[torch.Tensor, ...] | None, like: torch.Tensor) -> torch.Tensor:
        if q is None:
            return like[..., :0, :]
        return dequantize_groups(*q, self.bits, self._group(like.shape[-1]), like.dtype)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new states and return all keys/values (older ones dequantized)."""
        if not getattr(self, "is_initialized", False):
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        first = self._qk is None and self.keys.numel() == 0
        old_k, old_v = self._dequant(self._qk, key_states), self._dequant(self._qv, value_states)
        res_k = torch.cat([self.keys, key_states], dim=-2) if self.keys.numel() else key_states
        res_v = (
            torch.cat([self.values, value_states], dim=-2) if self.values.numel() else value_states
        )
        out_k, out_v = torch.cat([old_k, res_k], dim=-2), torch.cat([old_v, res_v], dim=-2)
        if first:  # prefill attends to its own exact states, as HF's QuantizedLayer does
            out_k, out_v = key_states, value_states
        spill = res_k.shape[-2] - self.residual_length
        if spill > 0:  # tokens leaving the fp window are quantized once, never again
            self._push(res_k[..., :spill, :], res_v[..., :spill, :])
            res_k, res_v = res_k[..., spill:, :], res_v[..., spill:, :]
        self.keys, self.values = res_k.contiguous(), res_v.contiguous()
        return out_k, out_v

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.keys is not None and self.keys.numel():
            self.keys, self.values = fn(self.keys), fn(self.values)
        if self._qk is not None:
            self._qk = tuple(fn(t) for t in self._qk)
            self._qv = tuple(fn(t) for t in self._qv)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        # per-token scales: reordering the batch never touches another sample's grid
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices, ...])

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` tokens (assisted decoding rolls back this way)."""
        if tokens_to_remove > 0:
            raise ConfigError("crop takes a negative count of tokens to remove", "pass -n")
        n = -tokens_to_remove
        if n == 0 or not getattr(self, "is_initialized", False):
            return
        self.cumulative_length -= n
        r = self.keys.shape[-2] if self.keys.numel() else 0
        from_res = min(n, r)
        if from_res:
            self.keys, self.values = (
                self.keys[..., : r - from_res, :],
                self.values[..., : r - from_res, :],
            )
        left = n - from_res
        if left and self._qk is not None:
            self._qk = tuple(t[..., : t.shape[-2] - left, :] for t in self._qk)
            self._qv = tuple(t[..., : t.shape[-2] - left, :] for t in self._qv)

    def reset(self) -> None:
        # not super().reset(): what the base class clears differs between transformers releases
        self.keys = self.values = None
        self.is_initialized = False
        self.cumulative_length = 0
        self._qk = self._qv = None

    def nbytes(self) -> int:
        """Bytes held by this layer's cache tensors (codes, scales, minima, fp window)."""
        tensors = [*(self._qk or ()), *(self._qv or ())]
        if getattr(self, "keys", None) is not None:
            tensors += [self.keys, self.values]
        return sum(t.numel() * t.element_size() for t in tensors)


class QuantizedKVCache(Cache):
    """A transformers ``Cache`` with int8/int4 keys and values in every block.

    ``model.generate(ids, past_key_values=QuantizedKVCache(model.config, bits=8))``
    """

    def __init__(
        self, config: Any, bits: int = 8, group_size: int | None = None, residual_length: int = 0
    ):
        _check_kv_settings(bits, group_size, residual_length)
        text = config.get_text_config(decoder=True)
        n = int(text.num_hidden_layers)
        if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
            layer_types = getattr(text, "layer_types", None) or []
            if any(t != "full_attention" for t in layer_types):
                raise ConfigError(
                    "QuantizedKVCache supports full-attention models only; this one has sliding-window layers",
                    "use the default DynamicCache for this model",
                )
        self.bits, self.group_size, self.residual_length = bits, group_size, residual_length
        super().__init__(
            layers=[QuantizedKVLayer(bits, group_size, residual_length) for _ in range(n)]
        )


def cache_nbytes(cache: Cache) -> int:
    """Bytes of the key/value tensors a cache holds (the quantity that grows with context)."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, QuantizedKVLayer):
            total += layer.nbytes()
        elif getattr(layer, "keys", None) is not None and layer.keys.numel():
            total += layer.keys.numel() * layer.keys.element_size()
            total += layer.values.numel() * layer.values.element_size()
    return total


@torch.no_grad()
def kv_cache_memory(
    model: torch.nn.Module,
    context_lengths: list[int],
    bits: tuple[int | None, ...] = (None, 8, 4),
    group_size: int | None = None,
    vocab_high: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Measure the cache's bytes after a prefill of each context length, fp32 vs int8 vs int4.

    Runs the model for real (random token ids: the cache's size does not depend on the text) and
    counts the bytes of the tensors the cache holds. One row per (context, bits):
    ``{"context": n, "bits": 32|8|4, "bytes": ..., "ratio": fp_bytes / bytes}``.
    """
    if not context_lengths or min(context_lengths) < 1:
        raise ConfigError("context_lengths must be positive integers", "e.g. [512, 1024, 2048]")
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    rows = []
    for n in context_lengths:
        ids = torch.randint(0, vocab_high, (1, n), generator=g).to(device)
        fp_bytes = None
        for b in bits:
            cache = (
                DynamicCache(config=model.config)
                if b is None
                else QuantizedKVCache(model.config, b, group_size)
            )
            model(input_ids=ids, **with_cache(model, cache), use_cache=True, logits_to_keep=1)
            nb = cache_nbytes(cache)
            if b is None:
                fp_bytes = nb
            rows.append(
                {
                    "context": n,
                    "bits": b or 32,
                    "bytes": nb,
                    "ratio": (fp_bytes / nb) if fp_bytes else None,
                }
            )
            del cache
    return rows


@torch.no_grad()
def kv_cache_fidelity(
    model: torch.nn.Module,
    ids: torch.Tensor,
    prompt_len: int,
    bits: int = 8,
    group_size: int | None = None,
    residual_length: int = 0,
) -> dict[str, float]:
    """How much a quantized cache changes next-token predictions, decoding ``ids`` token by token.

    Prefills ``ids[:, :prompt_len]`` then feeds the rest one token at a time (teacher forcing, so
    one early difference does not derail the comparison, unlike free-running greedy text), once
    with the fp cache and once quantized. Returns ``agree/top1`` and mean ``kl/teacher`` (fp run
    as teacher) over the decoded positions.
    """
    if ids.ndim != 2 or not 0 < prompt_len < ids.shape[1]:
        raise ConfigError(
            f"need [B, T] ids with 0 < prompt_len < T, got {tuple(ids.shape)} and {prompt_len}",
            "pass a longer sequence or a shorter prompt",
        )

    def run(cache: Cache) -> torch.Tensor:
        out = [
            model(
                input_ids=ids[:, :prompt_len],
                **with_cache(model, cache),
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
        ]
        for t in range(prompt_len, ids.shape[1] - 1):
            out.append(
                model(
                    input_ids=ids[:, t : t + 1], **with_cache(model, cache), use_cache=True
                ).logits[:, -1]
            )
        return torch.stack(out, 1).float()

    ref = run(DynamicCache(config=model.config))
    got = run(QuantizedKVCache(model.config, bits, group_size, residual_length))
    lp_ref, lp_got = ref.log_softmax(-1), got.log_softmax(-1)
    kl = (lp_ref.exp() * (lp_ref - lp_got)).sum(-1).mean()
    agree = (ref.argmax(-1) == got.argmax(-1)).float().mean()
    return {"agree/top1": float(agree), "kl/teacher": float(kl)}
