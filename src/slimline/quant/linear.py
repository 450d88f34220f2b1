"""``QuantLinear``: a Linear layer whose weight is stored as packed integer codes.

It holds the packed codes (``pack.py``), per-group scales and (asymmetric) zero points, and an
optional per-input-channel ``input_scale`` (AWQ's scaling when it could not be folded into a
preceding op: ``y = W_q (x / s)``). ``pack()``/``unpack()`` move it in and out of an artifact
bit-exactly.

How it multiplies is its ``path``, chosen by measurement on this CPU (``measure_paths``):

* ``dequant-cached``: dequantize once into an fp32 weight kept beside the codes, then the fp32
  GEMM. Exactly the dequantized model's numbers; fp32 speed; the memory saving is on disk only.
* ``dequant-fly``: dequantize on every call (small resident memory, slower).
* ``ort-nbits`` / ``ort-nbits-int8act``: ONNX Runtime's ``MatMulNBits`` kernel (4 or 8 bits,
  power-of-two groups) on the packed codes, with fp32 activations (accuracy_level 0) or int8
  activations (accuracy_level 4: not exact, the activations are rounded too).

Measured on the 2-core AVX2 VM (torch 2.13, 1 thread, 1536x576 layer; see bench/results/quant.md):
fp32 GEMM 0.10-0.13 ms for one token and 16-45 ms for 512; ``torch._weight_int8pack_mm`` 1.5 ms
and 1660 ms (10-100x slower), ``torch._weight_int4pack_mm_for_cpu`` 2.1 ms and 2800 ms,
dequantize-on-the-fly 0.5 ms and 58 ms, ORT MatMulNBits 4-bit fp32 activations 0.15 ms / 44 ms,
ORT 4-bit int8 activations 0.066 ms / 48 ms. So torch's own weight-only kernels are never used;
``dequant-cached`` is the exact default and the int8-activation ORT kernel is the only one faster
than fp32, for single-token decode only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from slimline.core import Codec, register_codec
from slimline.errors import ConfigError, DataError
from slimline.quant import grid, pack
from slimline.quant.grid import QuantScheme

PATHS = ("dequant-cached", "dequant-fly", "ort-nbits", "ort-nbits-int8act")
EXACT_PATHS = ("dequant-cached", "dequant-fly", "ort-nbits")


@register_codec
class QuantLinear(nn.Module, Codec):
    """Packed integer weight + per-group scales; multiplies on its measured ``path``."""

    codec: ClassVar[str] = "quant.linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scheme: QuantScheme,
        *,
        bias: bool = False,
        input_scale: bool = False,
        path: str = "dequant-cached",
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scheme = scheme
        n_groups = scheme.n_groups(in_features)
        nbytes = pack.packed_nbytes(in_features * out_features, scheme.bits)
        self.register_buffer("qweight", torch.zeros(nbytes, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, n_groups))
        zero_shape = (0,) if scheme.symmetric else (out_features, n_groups)
        # offset grids (gguf-q4_1/q5_1/q4_k/q5_k) keep a float offset per group, not an int zero
        zero_dtype = torch.float32 if scheme.offset_form else torch.uint8
        self.register_buffer("zero", torch.zeros(zero_shape, dtype=zero_dtype))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("input_scale", torch.ones(in_features) if input_scale else None)
        self._w: torch.Tensor | None = None  # dequant-cached weight (not saved)
        self._ort: Any = None
        self.path = path
        self.set_path(path)

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        scheme: QuantScheme,
        bias: torch.Tensor | None = None,
        input_scale: torch.Tensor | None = None,
    ) -> QuantLinear:
        """Build from integer codes ``[out, in]`` and per-group ``scale``/``zero`` ``[out, G]``."""
        out_f, in_f = codes.shape
        m = cls(in_f, out_f, scheme, bias=bias is not None, input_scale=input_scale is not None)
        m.qweight = pack.pack(codes, scheme.bits)
        m.scale = scale.detach().float().clone()
        if scheme.offset_form:
            m.zero = zero.detach().float().clone()
        elif not scheme.symmetric:
            m.zero = zero.detach().round().to(torch.uint8).clone()
        if bias is not None:
            m.bias = bias.detach().float().clone()
        if input_scale is not None:
            m.input_scale = input_scale.detach().float().clone()
        return m

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, scheme: QuantScheme, input_scale: torch.Tensor | None = None
    ) -> QuantLinear:
        """Round-to-nearest quantization of ``linear`` (weight already scaled if ``input_scale``)."""
        w = linear.weight.detach().float()
        scale, zero = grid.qparams(w, scheme)
        codes = grid.quantize(w, scale, zero, scheme)
        return cls.from_codes(codes, scale, zero, scheme, linear.bias, input_scale)

    # --- weights --------------------------------------------------------------------------

    def codes(self) -> torch.Tensor:
        n = self.in_features * self.out_features
        return pack.unpack(self.qweight, self.scheme.bits, n).reshape(
            self.out_features, self.in_features
        )

    def zero_points(self) -> torch.Tensor:
        if self.scheme.symmetric:
            return torch.full_like(self.scale, float(2 ** (self.scheme.bits - 1)))
        return self.zero.float()

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 weight this layer multiplies by (input scaling not applied)."""
        return grid.dequantize(self.codes(), self.scale, self.zero_points(), self.scheme)

    def effective_weight(self) -> torch.Tensor:
        """fp32 weight equivalent to the whole layer, input scaling folded in: ``W / s``."""
        w = self.dequantized_weight()
        return w / self.input_scale if self.input_scale is not None else w

    def nbytes(self) -> int:
        """Bytes of everything this layer stores (codes, scales, zeros, bias, input scale)."""
        return sum(
            t.numel() * t.element_size()
            for t in (self.qweight, self.scale, self.zero, self.bias, self.input_scale)
            if t is not None
        )

    # --- execution paths ------------------------------------------------------------------

    def path_supported(self, path: str) -> bool:
        if path in ("dequant-cached", "dequant-fly"):
            return True
        if path.startswith("ort-nbits"):
            if self.scheme.grid is not None:  # GGUF grids are served by llama.cpp
                return False
            g = self.scheme.group_size
            return self.scheme.bits in (4, 8) and (g is None or (g >= 16 and g & (g - 1) == 0))
        return False

    def set_path(self, path: str) -> None:
        """Switch the multiplication kernel; drops what the previous path cached."""
        if path not in PATHS:
            raise ConfigError(f"unknown QuantLinear path {path!r}", f"use one of {list(PATHS)}")
        if not self.path_supported(path):
            raise ConfigError(
                f"path {path} does not support {self.scheme.label()} weights",
                "ORT MatMulNBits needs 4 or 8 bits and a power-of-two group >= 16",
            )
        self.path = path
        self._w = None
        self._ort = None

    def _apply(self, fn: Any, recurse: bool = True) -> QuantLinear:  # .to()/.float(): drop caches
        self._w = None
        self._ort = None
        return super()._apply(fn, recurse)

    def _ort_session(self) -> Any:
        from slimline.quant.ort_kernel import nbits_session

        if self._ort is None:
            self._ort = nbits_session(self, int8_act=self.path.endswith("int8act"))
        return self._ort

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x / self.input_scale.to(x.dtype)
        if self.path.startswith("ort-nbits") and x.device.type == "cpu":
            shape = x.shape
            x2 = x.detach().reshape(-1, self.in_features).float().contiguous().numpy()
            y = torch.from_numpy(self._ort_session().run(None, {"x": x2})[0])
            y = y.reshape(*shape[:-1], self.out_features).to(x.dtype)
            return y + self.bias.to(y.dtype) if self.bias is not None else y
        if self.path == "dequant-fly":
            w = self.dequantized_weight().to(x.device, x.dtype)
        else:
            if self._w is None or self._w.device != x.device or self._w.dtype != x.dtype:
                self._w = self.dequantized_weight().to(x.device, x.dtype)
            w = self._w
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return nn.functional.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.scheme.label()}, path={self.path}"

    # --- Codec ----------------------------------------------------------------------------

    def pack(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"qweight": self.qweight, "scale": self.scale}
        if not self.scheme.symmetric:
            tensors["zero"] = self.zero
        if self.bias is not None:
            tensors["bias"] = self.bias
        if self.input_scale is not None:
            tensors["input_scale"] = self.input_scale
        meta = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "scheme": self.scheme.model_dump(mode="json", exclude={"grid"})
            | ({"grid": self.scheme.grid} if self.scheme.grid else {}),
            "path": self.path,
        }
        return {k: v.detach().clone() for k, v in tensors.items()}, meta

    @classmethod
    def unpack(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> QuantLinear:
        try:
            scheme = QuantScheme(**meta["scheme"])
            in_f, out_f = int(meta["in_features"]), int(meta["out_features"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                f"quant.linear metadata is malformed: {e}", "re-save the artifact"
            ) from e
        m = cls(
            in_f,
            out_f,
            scheme,
            bias="bias" in tensors,
            input_scale="input_scale" in tensors,
        )
        expected = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        for k, t in tensors.items():
            if k not in expected or tuple(t.shape) != expected[k]:
                raise DataError(
                    f"quant.linear tensor {k} has shape {tuple(t.shape)}, expected "
                    f"{expected.get(k, 'no such tensor')}",
                    "the artifact is damaged or from another version; re-save it",
                )
            setattr(m, k, t.detach().clone().to(getattr(m, k).dtype))
        path = meta.get("path", "dequant-cached")
        m.set_path(path if m.path_supported(path) else "dequant-cached")
        return m


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def set_path(model: nn.Module, path: str) -> int:
    """Put every QuantLinear of ``model`` that supports it on ``path``; returns how many."""
    n = 0
    for m in quant_linears(model).values():
        if m.path_supported(path):
            m.set_path(path)
            n += 1
    return n


@torch.no_grad()
def measure_paths(
    layer: QuantLinear,
    tokens: Iterable[int] = (1, 512),
    paths: Iterable[str] = PATHS,
    repeats: int = 7,
) -> dict[str, dict[int, float]]:
    """Median milliseconds of each supported path (and the fp32 GEMM as ``fp32``) per token count.

    A timing, not a test: run it where the model will run; the CPU here is shared, so compare
    paths measured in the same call only.
    """
    original = layer.path
    w = layer.effective_weight()
    results: dict[str, dict[int, float]] = {}

    def med(fn: Any) -> float:
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2] * 1e3

    candidates = ["fp32", *[p for p in paths if layer.path_supported(p)]]
    for t in tokens:
        x = torch.randn(t, layer.in_features)
        for p in candidates:
            if p == "fp32":
                ms = med(lambda x=x: nn.functional.linear(x, w, layer.bias))
            else:
                layer.set_path(p)
                ms = med(lambda x=x: layer(x))
            results.setdefault(p, {})[t] = round(ms, 4)
    layer.set_path(original)
    return results


def choose_path(
    layer: QuantLinear, tokens: int = 1, allow_int8_activations: bool = False
) -> tuple[str, dict[str, dict[int, float]]]:
    """The fastest path for ``tokens``-row inputs by measurement, exact paths unless allowed."""
    allowed = PATHS if allow_int8_activations else EXACT_PATHS
    timings = measure_paths(layer, tokens=(tokens,), paths=allowed)
    best = min((p for p in timings if p != "fp32"), key=lambda p: timings[p][tokens])
    return best, timings
