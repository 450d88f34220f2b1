"""Weight quantization: RTN, GPTQ and AWQ onto a shared integer grid, packed into ``QuantLinear``.

``quantize(model, config, data=calib_ids)`` is the one verb; the registered techniques are
``quant.rtn``, ``quant.gptq``, ``quant.awq`` (weight-only), ``quant.smoothquant`` + ``quant.w8a8``
(weights and activations) and ``quant.mixed`` (per-layer bits under a size budget).
``export_dequantized`` writes a plain HF model; ``kvcache`` and ``qat`` are used from generation
and training.
"""

from slimline.quant.api import dequantize_model, export_dequantized, quantize
from slimline.quant.awq import Awq
from slimline.quant.config import WeightQuantConfig
from slimline.quant.gptq import Gptq, gptq_quantize
from slimline.quant.grid import (
    QuantScheme,
    dequantize,
    fake_quantize,
    make_scheme,
    qparams,
    sqnr_db,
)
from slimline.quant.linear import QuantLinear, measure_paths, set_path
from slimline.quant.mixed import MixedPrecision
from slimline.quant.rtn import Rtn
from slimline.quant.smoothquant import W8A8, SmoothQuant, W8A8Linear, set_w8a8_backend

__all__ = [
    "W8A8",
    "Awq",
    "Gptq",
    "MixedPrecision",
    "QuantLinear",
    "QuantScheme",
    "Rtn",
    "SmoothQuant",
    "W8A8Linear",
    "WeightQuantConfig",
    "dequantize",
    "dequantize_model",
    "export_dequantized",
    "fake_quantize",
    "gptq_quantize",
    "make_scheme",
    "measure_paths",
    "qparams",
    "quantize",
    "set_path",
    "set_w8a8_backend",
    "sqnr_db",
]
