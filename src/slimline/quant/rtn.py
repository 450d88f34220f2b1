"""Round-to-nearest (``quant.rtn``): each weight onto its group's min-max grid, no data needed.

The baseline every other method must beat; at 8 bits it is near lossless on its own.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from torch import nn

from slimline.core import Context, register_technique
from slimline.progress import track
from slimline.quant.config import Undo, WeightQuantConfig, layer_record, select_linears, summarize
from slimline.quant.grid import sqnr_db
from slimline.quant.linear import QuantLinear


class Rtn(WeightQuantConfig):
    kind: ClassVar[str] = "quant.rtn"


@register_technique(Rtn)
def apply_rtn(model: nn.Module, cfg: Rtn, ctx: Context) -> dict[str, Any]:
    """Round-to-nearest weight quantization onto a per-group min-max grid."""
    t0 = time.perf_counter()
    scheme = cfg.scheme()
    linears = select_linears(model, cfg)
    undo = Undo(model)
    layers = []
    try:
        for name, lin in track(list(linears.items()), "RTN"):
            q = QuantLinear.from_linear(lin, scheme)
            sq = sqnr_db(lin.weight.detach(), q.dequantized_weight())
            layers.append(layer_record(name, lin.in_features, scheme, sqnr_db=round(sq, 2)))
            undo.replace(name, q)
    except BaseException:
        undo.rollback()
        raise
    return {
        "method": "rtn",
        "seconds": time.perf_counter() - t0,
        **summarize(model, layers, scheme),
    }
