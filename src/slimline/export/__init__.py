"""Export for the engine that will serve a model: GGUF for llama.cpp (grids kept exactly,
verified in the engine)."""

from slimline.export.gguf_export import QTYPES, GgufExport, dense_weight, export_gguf, grid_blocks

__all__ = ["QTYPES", "GgufExport", "dense_weight", "export_gguf", "grid_blocks"]
