"""Compact storage of a pruned linear: a bitmask plus only the surviving values.

A 50%-sparse fp32 weight stored dense costs 32 bits/weight; as ``SparseLinear`` it costs
1 bit (mask) + 0.5 x 32 bits (values) = 17 bits/weight, so an artifact's size reflects the
sparsity (llm-compressor saved its sparse models dense). With ``bits=4`` the surviving values are
also put on ``slimline.quant.grid``'s integer grid (group-wise along the input, min-max) and packed
by ``slimline.quant.pack``: 1 + 0.5 x 4 bits/weight plus the group scales.

The codec is for storage and inference: ``forward`` rebuilds the dense weight once and caches it
(dense CPU matmul is faster than sparse kernels at these sparsities). ``to_dense`` turns the
module back into an ``nn.Linear`` (with its mask) for further training.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from slimline.core import Codec, register_codec, set_submodule
from slimline.errors import ConfigError, ModelLoadError

_SHIFTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Flat bool tensor -> uint8, 8 flags a byte (first flag in the lowest bit)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.reshape(-1, 8) * _SHIFTS).sum(1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    bits = (packed.reshape(-1, 1) & _SHIFTS) != 0
    return bits.reshape(-1)[:numel]


@register_codec
class SparseLinear(nn.Module, Codec):
    """A linear layer stored as bitmask + non-zero values (optionally 4/8-bit quantized)."""

    codec: ClassVar[str] = "prune.sparse"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bitmask: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        bits: int | None = None,
        group_size: int | None = None,
        scale: torch.Tensor | None = None,
        zero: torch.Tensor | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_dtype = dtype
        self.bits, self.group_size = bits, group_size
        self.register_buffer("bitmask", bitmask)
        self.register_buffer("values", values)
        if scale is not None:
            self.register_buffer("scale", scale)
            self.register_buffer("zero", zero)
        self.bias = nn.Parameter(bias) if bias is not None else None
        self._dense: torch.Tensor | None = None

    @property
    def nnz(self) -> int:
        return int(self.values.numel()) if self.bits is None else int(self.mask().sum())

    def mask(self) -> torch.Tensor:
        n = self.in_features * self.out_features
        return unpack_bits(self.bitmask, n).reshape(self.out_features, self.in_features)

    def _scheme(self) -> Any:
        from slimline.quant.grid import make_scheme

        return make_scheme(self.bits, self.group_size, symmetric=False)

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls, lin: nn.Linear, *, bits: int | None = None, group_size: int | None = 64
    ) -> SparseLinear:
        """Pack ``lin`` (zeros = pruned). ``bits`` 4 or 8 also quantizes the survivors."""
        w = lin.weight.detach()
        mask = w != 0
        bias = lin.bias.detach().clone() if lin.bias is not None else None
        if bits is None:
            return cls(
                w.shape[1], w.shape[0], pack_bits(mask), w[mask].clone(), bias, dtype=w.dtype
            )
        from slimline.quant.grid import make_scheme, qparams, quantize
        from slimline.quant.pack import pack

        if bits not in (4, 8):
            raise ConfigError(
                f"sparse values can be stored in 4 or 8 bits, not {bits}", "use 4 or 8"
            )
        scheme_obj = make_scheme(bits, group_size, symmetric=False)
        scale, zero = qparams(w.float(), scheme_obj)
        codes = quantize(w.float(), scale, zero, scheme_obj)
        return cls(
            w.shape[1],
            w.shape[0],
            pack_bits(mask),
            pack(codes[mask], bits),
            bias,
            dtype=w.dtype,
            bits=bits,
            group_size=group_size,
            scale=scale.to(torch.float16),
            zero=zero.to(torch.uint8),
        )

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        mask = self.mask().to(self.values.device)
        w = torch.zeros(
            self.out_features, self.in_features, dtype=torch.float32, device=mask.device
        )
        if self.bits is None:
            w[mask] = self.values.float()
            return w.to(self.weight_dtype)
        from slimline.quant.grid import dequantize
        from slimline.quant.pack import unpack

        codes = torch.zeros_like(w, dtype=torch.uint8)
        codes[mask] = unpack(self.values, self.bits, int(mask.sum())).to(mask.device)
        deq = dequantize(codes, self.scale.float(), self.zero.float(), self._scheme())
        return (deq * mask).to(self.weight_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense is None or self._dense.device != x.device:
            self._dense = self.dense_weight().to(x.device)
        return F.linear(x, self._dense.to(x.dtype), self.bias)

    def pack(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"bitmask": self.bitmask, "values": self.values}
        if self.bits is not None:
            tensors |= {"scale": self.scale, "zero": self.zero}
        if self.bias is not None:
            tensors["bias"] = self.bias.detach()
        meta = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "dtype": str(self.weight_dtype).removeprefix("torch."),
            "bits": self.bits,
            "group_size": self.group_size,
        }
        return tensors, meta

    @classmethod
    def unpack(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> SparseLinear:
        try:
            i, o = int(meta["in_features"]), int(meta["out_features"])
            dtype = getattr(torch, str(meta["dtype"]))
            bits = meta.get("bits")
            bitmask, values = tensors["bitmask"], tensors["values"]
        except (KeyError, AttributeError, TypeError, ValueError) as e:
            raise ModelLoadError(
                f"sparse module metadata is incomplete: {e}", "re-save the artifact"
            ) from e
        if bitmask.dtype != torch.uint8 or bitmask.numel() != (i * o + 7) // 8:
            raise ModelLoadError(
                f"sparse bitmask has {bitmask.numel()} bytes, {(i * o + 7) // 8} expected",
                "the artifact is damaged: re-save it",
            )
        nnz = int(unpack_bits(bitmask, i * o).sum())
        if bits is None and values.numel() != nnz:
            raise ModelLoadError(
                f"sparse module holds {values.numel()} values for {nnz} mask bits",
                "the artifact is damaged: re-save it",
            )
        return cls(
            i,
            o,
            bitmask,
            values,
            tensors.get("bias"),
            dtype=dtype,
            bits=bits,
            group_size=meta.get("group_size"),
            scale=tensors.get("scale"),
            zero=tensors.get("zero"),
        )

    def extra_repr(self) -> str:
        b = "" if self.bits is None else f", bits={self.bits}, group_size={self.group_size}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}{b}"
        )


def to_sparse(
    model: nn.Module,
    *,
    min_sparsity: float = 0.25,
    bits: int | None = None,
    group_size: int | None = 64,
) -> dict[str, Any]:
    """Replace every Linear with at least ``min_sparsity`` zeros by a ``SparseLinear`` (below that,
    the mask costs more than it saves). Tied weights (shared with an embedding) stay dense."""
    shared = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        shared[id(p)] = shared.get(id(p), 0) + 1
    done, dense_bytes, sparse_bytes = [], 0, 0
    for name, mod in list(model.named_modules()):
        if type(mod) is not nn.Linear or shared.get(id(mod.weight), 0) > 1:
            continue
        w = mod.weight
        if float((w == 0).float().mean()) < min_sparsity:
            continue
        sp = SparseLinear.from_linear(mod, bits=bits, group_size=group_size)
        set_submodule(model, name, sp)
        done.append(name)
        dense_bytes += w.numel() * w.element_size()
        packed = sp.pack()[0]
        sparse_bytes += sum(t.numel() * t.element_size() for k, t in packed.items() if k != "bias")
    return {"modules": done, "dense_weight_bytes": dense_bytes, "sparse_weight_bytes": sparse_bytes}


def to_dense(model: nn.Module) -> int:
    """Turn every ``SparseLinear`` back into an ``nn.Linear`` with its mask (for fine-tuning)."""
    from slimline.prune.masks import apply_mask

    n = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, SparseLinear):
            w = mod.dense_weight()
            lin = nn.Linear(
                mod.in_features, mod.out_features, bias=mod.bias is not None, dtype=w.dtype
            )
            with torch.no_grad():
                lin.weight.copy_(w)
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            apply_mask(lin, mod.mask())
            set_submodule(model, name, lin)
            n += 1
    return n
