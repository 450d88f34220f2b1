"""Range observers for static activation quantization.

A static int8 activation needs its scale fixed before deployment, from calibration data. How the
range is chosen matters more than anything else in static activation quantization: min-max is
exact on the data it saw but lets one outlier stretch the grid for every other value; a percentile
clips rare outliers; the MSE-optimal range trades clipping error against rounding error directly
(as in TensorRT's / Nagel et al. 2021 "A White Paper on Neural Network Quantization", §3.3).

Each observer sees activations through ``observe(x)`` (any shape; the last dimension is the
channel) and returns ``(scale, zero)`` from ``qparams()``: per-tensor (shape ``[]``) or per-channel
(shape ``[C]``). ``fake_quant(x, scale, zero, bits, symmetric)`` rounds on that grid.
"""

from __future__ import annotations

import abc
import math
from typing import Literal

import torch

from slimline.errors import ConfigError, DataError

Granularity = Literal["tensor", "channel"]


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-wide grid: [-2^(b-1), 2^(b-1)-1] symmetric, [0, 2^b-1] asymmetric."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def range_to_qparams(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point that map [lo, hi] onto the grid (zero stays exactly representable)."""
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = (amax / qmax).clamp(min=tiny)
        zero = torch.zeros_like(scale)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=tiny)
        zero = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale.float(), zero.float()


def fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """Quantize then dequantize ``x`` on the grid (scale, zero); scale broadcasts on the last dim."""
    qmin, qmax = qrange(bits, symmetric)
    q = torch.clamp(torch.round(x / scale) + zero, qmin, qmax)
    return (q - zero) * scale


def check_finite(x: torch.Tensor, what: str) -> None:
    """Refuse NaN/inf: a single one would make every scale derived from the data meaningless."""
    if not torch.isfinite(x).all():
        n_bad = int((~torch.isfinite(x)).sum())
        raise DataError(
            f"{what} contains {n_bad} NaN/inf values; a quantization range cannot be derived from them",
            "check the model in fp32 on this data first (overflow in fp16? a broken checkpoint?)",
        )


class Observer(abc.ABC):
    """Base: collects activation statistics and turns them into (scale, zero).

    ``granularity="tensor"`` gives one scale; ``"channel"`` one per last-dim channel (weights'
    output channels, or activation input channels for SmoothQuant-style analysis).
    """

    def __init__(self, bits: int = 8, symmetric: bool = True, granularity: Granularity = "tensor"):
        if not 2 <= bits <= 16:
            raise ConfigError(
                f"observer bits must be in 2..16, got {bits}", "use 8 for int8 activations"
            )
        if granularity not in ("tensor", "channel"):
            raise ConfigError(f"unknown granularity {granularity!r}", "use 'tensor' or 'channel'")
        self.bits = bits
        self.symmetric = symmetric
        self.granularity = granularity
        self.n_seen = 0

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        check_finite(x, "activation batch")
        x = x.detach().float()
        return x.reshape(-1, x.shape[-1]) if self.granularity == "channel" else x.reshape(-1, 1)

    @abc.abstractmethod
    def observe(self, x: torch.Tensor) -> None:
        """Accumulate statistics from one batch of activations."""

    @abc.abstractmethod
    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) of the chosen quantization range."""

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero); shapes ``[]`` per tensor or ``[C]`` per channel."""
        if self.n_seen == 0:
            raise DataError(
                f"{type(self).__name__} has seen no data",
                "run calibration batches through observe() first",
            )
        lo, hi = self.range()
        scale, zero = range_to_qparams(lo, hi, self.bits, self.symmetric)
        if self.granularity == "tensor":
            return scale.reshape(()), zero.reshape(())
        return scale, zero


class MinMaxObserver(Observer):
    """Running min and max: every calibration value lands on the grid, outliers included."""

    def __init__(self, bits: int = 8, symmetric: bool = True, granularity: Granularity = "tensor"):
        super().__init__(bits, symmetric, granularity)
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        lo, hi = rows.amin(0), rows.amax(0)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.n_seen += rows.shape[0]

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.lo is not None and self.hi is not None
        return self.lo, self.hi


class _SampleObserver(Observer):
    """Keeps a bounded, seeded random sample of rows: percentiles and MSE search need the values."""

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = True,
        granularity: Granularity = "tensor",
        max_values: int = 2**21,
        seed: int = 0,
    ):
        super().__init__(bits, symmetric, granularity)
        self.max_values = max_values
        self._gen = torch.Generator().manual_seed(seed)
        self._sample: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        self.n_seen += rows.shape[0]
        buf = rows if self._sample is None else torch.cat([self._sample, rows])
        max_rows = max(1, self.max_values // buf.shape[1])
        if buf.shape[0] > max_rows:  # uniform subsample keeps the distribution, bounds memory
            keep = torch.randperm(buf.shape[0], generator=self._gen)[:max_rows]
            buf = buf[keep]
        self._sample = buf

    @property
    def sample(self) -> torch.Tensor:
        assert self._sample is not None
        return self._sample


class PercentileObserver(_SampleObserver):
    """Range = the ``percentile`` of the values (of |x| when symmetric): clips the rarest outliers."""

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = True,
        granularity: Granularity = "tensor",
        percentile: float = 99.99,
        max_values: int = 2**21,
        seed: int = 0,
    ):
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(
                f"percentile must be in (50, 100], got {percentile}",
                "typical values: 99.9 to 99.999",
            )
        super().__init__(bits, symmetric, granularity, max_values, seed)
        self.percentile = percentile

    def _quantile(self, v: torch.Tensor, q: float) -> torch.Tensor:
        # kthvalue instead of torch.quantile: no 16M-element limit, exact order statistic
        n = v.shape[0]
        k = min(n, max(1, math.ceil(q * n)))
        return v.kthvalue(k, dim=0).values

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sample
        p = self.percentile / 100.0
        if self.symmetric:
            amax = self._quantile(s.abs(), p)
            return -amax, amax
        return self._quantile(s, 1.0 - p), self._quantile(s, p)


class MseObserver(_SampleObserver):
    """Range minimising the mean squared quantization error on the sample (grid search on clipping).

    Candidates are the min-max range shrunk by factors in [``min_ratio``, 1]; each channel picks
    its own factor. On heavy-tailed data this beats min-max: the rounding error saved on the bulk
    outweighs the clipping error on a few outliers.
    """

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = True,
        granularity: Granularity = "tensor",
        n_grid: int = 200,
        min_ratio: float = 0.05,
        max_values: int = 2**21,
        seed: int = 0,
    ):
        super().__init__(bits, symmetric, granularity, max_values, seed)
        self.n_grid = n_grid
        self.min_ratio = min_ratio

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sample
        lo0, hi0 = s.amin(0), s.amax(0)
        best_err = torch.full_like(lo0, float("inf"))
        best_lo, best_hi = lo0.clone(), hi0.clone()
        for r in torch.linspace(self.min_ratio, 1.0, self.n_grid).tolist():
            lo, hi = lo0 * r, hi0 * r
            scale, zero = range_to_qparams(lo, hi, self.bits, self.symmetric)
            err = (fake_quant(s, scale, zero, self.bits, self.symmetric) - s).pow(2).mean(0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, lo, best_lo)
            best_hi = torch.where(better, hi, best_hi)
        return best_lo, best_hi


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MseObserver,
}


def make_observer(
    name: str, bits: int = 8, symmetric: bool = True, granularity: Granularity = "tensor"
) -> Observer:
    """Observer by short name (``minmax``, ``percentile``, ``mse``), as configs spell it."""
    if name not in OBSERVERS:
        raise ConfigError(f"unknown observer {name!r}", f"use one of: {', '.join(OBSERVERS)}")
    return OBSERVERS[name](bits=bits, symmetric=symmetric, granularity=granularity)
