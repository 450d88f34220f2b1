"""The layer-by-layer calibration engine shared by every one-shot method.

The model runs one block at a time on calibration data: the first block's inputs are captured
from a real forward pass (so embeddings, rotary tables and masks come from the model's own code),
each block and its inputs go to a callback (GPTQ, SparseGPT, Wanda, AWQ, SmoothQuant,
sensitivity, ...), and the block's outputs — after the callback changed it — become the next
block's inputs, so later blocks calibrate against the error of earlier ones (as GPTQ does).
Memory stays at one block plus its activations: only the block in hand moves to ``device``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimline.calib.buffer import (
    ActivationBuffer,
    ResidentList,
    new_buffer,
    run_stats,
    trim_heap,
)
from slimline.core import select_modules
from slimline.errors import DataError
from slimline.models.arch import Arch, get_arch
from slimline.progress import track

HookFn = Callable[[str, nn.Module, torch.Tensor, Any], None]
STREAM_ATTR = "_slimline_stream"  # set on a lazily opened model by slimline.calib.stream


class _StopForward(Exception):
    """Raised by the capture hook on the first block: the rest of the model need not run."""


def _first_tensor(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@dataclass
class BlockStep:
    """One block and its calibration activations, handed to a callback."""

    index: int
    name: str  # full dotted name, e.g. "model.layers.3"
    block: nn.Module
    # hidden states, one tensor per calibration batch: a list, or under an activation limit
    # (slimline.calib.buffer) a sequence to iterate or index, partly read back from disk
    inputs: list[torch.Tensor]
    kwargs: list[dict[str, Any]]  # the other forward arguments, per batch
    device: torch.device
    outputs: list[torch.Tensor] | None = None  # set by a callback that left the block unchanged
    record: dict[str, Any] = field(default_factory=dict)
    new_store: Callable[[], Any] = list  # the engine's bounded buffer (slimline.calib.buffer)
    # called after each batch (a streamed run: hand the batch's temporaries back to the OS)
    after_batch: Callable[[], None] | None = None

    @torch.no_grad()
    def forward(self, block: nn.Module | None = None) -> list[torch.Tensor]:
        """Run every calibration batch through ``block`` (default: this step's block)."""
        blk = block if block is not None else self.block
        out = self.new_store()
        for x, kw in zip(self.inputs, self.kwargs, strict=True):
            out.append(_first_tensor(blk(x, **kw)))
            if self.after_batch is not None:
                self.after_batch()
        return out

    @torch.no_grad()
    def run(self) -> None:
        """Run every batch through the block for its hooks only (``capture``): the outputs are
        dropped batch by batch, so statistics passes never hold a second set of activations."""
        for x, kw in zip(self.inputs, self.kwargs, strict=True):
            self.block(x, **kw)
            if self.after_batch is not None:
                self.after_batch()

    def linears(
        self, targets: Iterable[str] | None = None, ignore: Iterable[str] | None = None
    ) -> dict[str, nn.Linear]:
        """Linear layers of this block selected by ``targets``/``ignore``, by full name."""
        sel = select_modules(self.block, targets, ignore)
        return {f"{self.name}.{n}": m for n, m in sel.items()}  # type: ignore[misc]

    @contextlib.contextmanager
    def capture(self, modules: dict[str, nn.Module], fn: HookFn) -> Iterator[None]:
        """Call ``fn(name, module, input, output)`` on every forward of ``modules`` meanwhile."""
        handles = []
        for name, mod in modules.items():

            def hook(m: nn.Module, args: tuple, out: Any, _name: str = name) -> None:
                fn(_name, m, args[0], out)

            handles.append(mod.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @property
    def n_tokens(self) -> int:
        return sum(x.shape[0] * x.shape[1] for x in self.inputs)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def capture_inputs(
    model: nn.Module,
    arch: Arch,
    ids: torch.Tensor,
    batch_size: int,
    device: torch.device,
    store: Any = None,
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """The first block's hidden-state inputs and forward kwargs for each calibration batch
    (the inputs appended to ``store``, a list by default)."""
    first = arch.blocks(model)[0]
    inputs: list[torch.Tensor] = store if store is not None else []
    kwargs: list[dict[str, Any]] = []

    def grab(_m: nn.Module, args: tuple, kw: dict[str, Any]) -> None:
        kw = dict(kw)
        x = args[0] if args else kw.pop("hidden_states")
        inputs.append(x.detach())
        kw.pop("past_key_values", None)
        kw.pop("past_key_value", None)
        kw["use_cache"] = False
        kwargs.append(
            {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        )
        raise _StopForward

    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for i in range(0, ids.shape[0], batch_size):
            batch = ids[i : i + batch_size].to(device)
            try:
                model(input_ids=batch, attention_mask=torch.ones_like(batch), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return inputs, kwargs


def _check_ids(ids: torch.Tensor, min_samples: int) -> None:
    if ids.ndim != 2 or ids.dtype != torch.long:
        raise DataError(
            f"calibration data must be a [samples, tokens] tensor of token ids (got {tuple(ids.shape)} {ids.dtype})",
            "use slimline.data.calibration_blocks",
        )
    if ids.shape[0] < min_samples:
        raise DataError(
            f"{ids.shape[0]} calibration samples given, at least {min_samples} needed",
            "pass more calibration samples (--calib-samples)",
        )


@torch.no_grad()
def run_blocks(
    model: nn.Module,
    ids: torch.Tensor,
    on_block: Callable[[BlockStep], dict[str, Any] | None],
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    desc: str = "calibrate",
    blocks: Iterable[int] | None = None,
    min_samples: int = 1,
) -> list[dict[str, Any]]:
    """Run ``on_block`` on each block in order with its calibration activations.

    ``ids`` is ``[samples, tokens]``. Returns one record per processed block. ``blocks`` limits
    which blocks get the callback (the others still run, to feed their successors).
    """
    _check_ids(ids, min_samples)
    arch = get_arch(model)
    # A streamed model (slimline.calib.stream) is a skeleton on the meta device: its source
    # reads each part from disk when reached and writes it out (and frees it) when done.
    stream = getattr(model, STREAM_ATTR, None)
    home = torch.device("cpu") if stream is not None else _model_device(model)
    dev = torch.device(device) if device is not None else home
    block_list = arch.blocks(model)
    wanted = set(range(len(block_list))) if blocks is None else set(blocks)
    was_training = model.training
    model.eval()
    # Everything but the blocks moves to the work device for the capture pass.
    offload = dev != home
    if stream is not None:
        stream.begin(offload)
    with run_stats() as stats:

        def new_store() -> ResidentList | ActivationBuffer:
            return new_buffer(stats)

        if offload:
            model.to(dev)
            for blk in block_list:
                blk.to(home)
            block_list[0].to(dev)
        inputs, kwargs = capture_inputs(model, arch, ids, batch_size, dev, new_store())
        if offload:
            block_list[0].to(home)
        if stream is not None:
            stream.stem_done()
        records: list[dict[str, Any]] = []
        last = max(wanted) if wanted else -1
        try:
            for i in track(range(len(block_list)), desc):
                if i > last:
                    break
                blk = block_list[i]
                if stream is not None:
                    stream.load_block(i)
                if offload:
                    blk.to(dev)
                step = BlockStep(
                    i, arch.block_name(i), blk, inputs, kwargs, dev, new_store=new_store,
                    after_batch=trim_heap if stream is not None else None,
                )  # fmt: skip
                t0 = time.perf_counter()
                rec = on_block(step) if i in wanted else None
                outputs = step.outputs if step.outputs is not None else step.forward()
                if rec is not None or i in wanted:
                    records.append(
                        {
                            "block": i,
                            "name": step.name,
                            "seconds": time.perf_counter() - t0,
                            **(rec or {}),
                            **step.record,
                        }
                    )
                if offload:
                    blk.to(home)
                if stream is not None:
                    stream.block_done(i)
                if inputs is not outputs and hasattr(inputs, "close"):
                    inputs.close()  # this block's inputs are spent: free them (and their spill files)
                inputs = outputs
        finally:
            if offload:
                model.to(home)
            model.train(was_training)
        return records
