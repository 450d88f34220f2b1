"""Export to the formats deployment engines load: GGUF (llama.cpp) and plain HF directories."""

from slimline.export.gguf_export import QTYPES, dense_weight, export_gguf

__all__ = ["QTYPES", "dense_weight", "export_gguf"]
