"""Export for the engine that will serve a model: GGUF for llama.cpp, ONNX for ONNX Runtime
(grids kept exactly, verified in the engine)."""

from slimline.export.gguf_export import QTYPES, GgufExport, dense_weight, export_gguf, grid_blocks
from slimline.export.onnx_export import OnnxExport, export_onnx

__all__ = [
    "QTYPES",
    "GgufExport",
    "OnnxExport",
    "dense_weight",
    "export_gguf",
    "export_onnx",
    "grid_blocks",
]
