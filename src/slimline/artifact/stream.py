"""Write an artifact piece by piece, so a model never has to be in memory whole to be saved.

The streamed compressor (``slimline.calib.stream``) hands over one block's tensors at a time;
each piece is spilled as its own safetensors file inside the artifact's atomic temp dir. At the
end the pieces are copied, tensor by tensor, into the one ``model.safetensors`` the format
specifies (``slimline.artifact.io.write_safetensors``, the writer ``save_artifact`` uses
too), so the file is byte-identical to ``save_artifact``'s for the same tensors and old and
new artifacts are one format. Peak memory while assembling is one copy buffer, not the model.
Everything before the final rename happens in the temp dir, so a failure (a full disk included)
leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from slimline.artifact import atomic as _atomic
from slimline.artifact import keys as _keys
from slimline.artifact.atomic import NO_SPACE, disk_full
from slimline.artifact.io import (
    ArtifactInfo,
    _check_finite_tensors,
    _prepare_out,
    _resolve_parent,
    _save_args,
    write_artifact,
    write_safetensors,
)
from slimline.errors import ConfigError

_COPY_CHUNK = 64 << 20
SPILL_DIR = ".spill"


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return header, 8 + n


class ArtifactStream:
    """``with ArtifactStream(skeleton, tokenizer, out) as w: w.add(tensors, modules, tied); ...;
    info = w.commit()``. ``skeleton`` is the model on the meta device (config and class are read
    from it, never its weights). Output checks run at construction, before any work."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        out_dir: str | os.PathLike[str],
        *,
        manifest: dict[str, Any] | None = None,
        parent: str | os.PathLike[str] | None = None,
        key: Any = None,
        overwrite: bool = False,
        home: str | os.PathLike[str] | None = None,
    ):
        self.model, self.tokenizer, self.user = _save_args(model, tokenizer, manifest)
        self.out = _prepare_out(out_dir, overwrite)
        self.parent_digest = _resolve_parent(parent)
        self.signer = _keys.load_private_key(key, home)
        self.tmp = _atomic.new_temp_dir(self.out)
        self.spill = self.tmp / SPILL_DIR
        self.spill.mkdir()
        # name -> (spill file, dtype, shape, start, end) of the bytes in that file
        self.entries: dict[str, tuple[Path, str, list[int], int, int]] = {}
        self.modules: dict[str, Any] = {}
        self.tied: dict[str, str] = {}
        self.bytes_spilled = 0

    def __enter__(self) -> ArtifactStream:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def add(
        self,
        tensors: dict[str, torch.Tensor],
        modules: dict[str, Any] | None = None,
        tied: dict[str, str] | None = None,
    ) -> None:
        """Append one piece of the model: plain/packed tensors, codec module metas, ties."""
        from safetensors.torch import save_file

        twice = sorted(set(tensors) & self.entries.keys())
        if twice:
            raise ConfigError(
                f"tensors {twice[:3]} were written twice", "write each block exactly once"
            )
        _check_finite_tensors(tensors)
        self.modules.update(modules or {})
        self.tied.update(tied or {})
        if not tensors:
            return
        f = self.spill / f"{len(list(self.spill.iterdir())):05d}.safetensors"
        try:
            save_file(tensors, str(f))
        except OSError as e:
            if e.errno in NO_SPACE:
                raise disk_full(e, self.out) from e
            raise
        header, base = _read_header(f)
        for k, v in header.items():
            if k != "__metadata__":
                a, b = v["data_offsets"]
                self.entries[k] = (f, v["dtype"], v["shape"], base + a, base + b)
        self.bytes_spilled += f.stat().st_size

    def add_file(
        self, path: Path, modules: dict[str, Any] | None = None, tied: dict[str, str] | None = None
    ) -> None:
        """Take every tensor of the safetensors file ``path`` as it is (another artifact's
        weights, already checked when it was written and verified since): nothing is read
        into memory; ``commit`` copies its bytes."""
        header, base = _read_header(path)
        twice = sorted(set(header) - {"__metadata__"} & self.entries.keys())
        if twice:
            raise ConfigError(
                f"tensors {twice[:3]} were written twice", "write each block exactly once"
            )
        for k, v in header.items():
            if k != "__metadata__":
                a, b = v["data_offsets"]
                self.entries[k] = (path, v["dtype"], v["shape"], base + a, base + b)
        self.modules.update(modules or {})
        self.tied.update(tied or {})

    def _assemble(self, path: Path) -> None:
        def chunks(name: str) -> Any:
            src, _d, _s, a, b = self.entries[name]
            with open(src, "rb") as f:
                f.seek(a)
                left = b - a
                while left:
                    buf = f.read(min(left, _COPY_CHUNK))
                    left -= len(buf)
                    yield buf

        write_safetensors(
            path, {k: (d, s, b - a) for k, (_f, d, s, a, b) in self.entries.items()}, chunks
        )
        shutil.rmtree(self.spill)

    def commit(self) -> ArtifactInfo:
        """Assemble ``model.safetensors``, write config, tokenizer, manifest and signature, and
        rename the temp dir into place."""
        try:
            return write_artifact(
                self.tmp,
                self.out,
                self.model,
                self.tokenizer,
                self.user,
                parent_digest=self.parent_digest,
                signer=self.signer,
                shapes={k: tuple(v[2]) for k, v in self.entries.items()},
                modules=self.modules,
                tied=self.tied,
                write_weights=self._assemble,
            )
        except OSError as e:
            self.abort()
            if e.errno in NO_SPACE:
                raise disk_full(e, self.out) from e
            raise
        except BaseException:
            self.abort()
            raise
