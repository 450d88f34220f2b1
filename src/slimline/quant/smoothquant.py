"""SmoothQuant migration and W8A8 (int8 weight + int8 activation) linear layers.

LLM activations have a few channels whose magnitude is 10-100x the rest; per-token int8 then
spends its whole grid on them and rounds the other channels to zero. SmoothQuant (Xiao et al.
2023, arXiv:2211.10438) divides each input channel j by s_j and multiplies the matching weight
column by s_j — an exact identity in fp32 — with

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

moving quantization difficulty from activations to weights. The division is folded into the
norm that precedes q/k/v (``attn_norm``) and gate/up (``mlp_norm``), so it costs nothing at run
time. ``quant.smoothquant`` does only the migration (compose it with any weight quantizer);
``quant.w8a8`` swaps Linear layers for ``W8A8Linear``, optionally after smoothing.

``W8A8Linear`` forward, measured on this 2-core AVX2 VM (torch 2.13, 512x576 @ 576x1536):
``torch._int_mm`` is exact but ~35x SLOWER than the fp32 matmul (197 ms vs 5.5 ms), so the
default ``backend="sim"`` multiplies the int8 values as fp32 in chunks of 1024 input channels
(each chunk's sum stays below 2^24, so it is exactly the int32 accumulate) — bit-identical to
``_int_mm``, at fp32 speed plus the (de)quantization overhead: an accuracy simulation of a real
int8 kernel, not a CPU speedup. ``backend="fbgemm"`` is the real CPU int8 kernel (torch's
quantized ``linear_dynamic``: u8 x s8 GEMM, fp32 out; 512 rows about 2x faster than fp32 here).
fbgemm quantizes activations with one range per call (7-bit, clear of AVX2's int16
saturation); on a 512-token prompt that one range cost SmolLM2 2.3x perplexity, so each row is
first scaled to max|x| = 1 and the output scaled back — per-token ranges through the same kernel.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from slimline.core import (
    Codec,
    Context,
    Need,
    SizeEffect,
    TechniqueConfig,
    register_codec,
    register_technique,
    require_selection,
    select_modules,
    set_submodule,
)
from slimline.errors import ConfigError, DataError, UnsupportedArchitectureError
from slimline.progress import track
from slimline.quant.observers import check_finite, make_observer

# ---------------------------------------------------------------------------------------------
# activation statistics


def _batches(ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if ids is None or ids.ndim != 2 or ids.shape[0] == 0:
        raise DataError(
            "calibration data must be a non-empty [N, T] tensor of token ids",
            "pass ctx.calib = slimline.data.calibration_blocks(tokenizer, n=32, seq_len=512)",
        )
    return list(ids.split(batch_size))


@torch.no_grad()
def capture_linear_inputs(
    model: nn.Module,
    calib_ids: torch.Tensor,
    modules: dict[str, nn.Module],
    fn: Any,
    batch_size: int = 4,
    desc: str = "calibrating",
) -> None:
    """Run ``calib_ids`` through ``model`` and call ``fn(name, x)`` with each module's input.

    Inputs are flattened to ``[tokens, in_features]``. A plain forward with hooks: every module
    sees the activations of the model as it is (compressed layers upstream included).
    """
    handles = []
    for name, mod in modules.items():

        def hook(_m: nn.Module, args: tuple, _name: str = name) -> None:
            x = args[0]
            fn(_name, x.reshape(-1, x.shape[-1]))

        handles.append(mod.register_forward_pre_hook(hook))
    device = next(model.parameters()).device
    try:
        for batch in track(_batches(calib_ids, batch_size), desc):
            model(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def act_absmax(
    model: nn.Module, calib_ids: torch.Tensor, modules: dict[str, nn.Module], batch_size: int = 4
) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| of each module's input over the calibration data."""
    stats: dict[str, torch.Tensor] = {}

    def fn(name: str, x: torch.Tensor) -> None:
        check_finite(x, f"input of {name}")
        m = x.detach().abs().float().amax(0)
        stats[name] = m if name not in stats else torch.maximum(stats[name], m)

    capture_linear_inputs(model, calib_ids, modules, fn, batch_size, "SmoothQuant stats")
    return stats


# ---------------------------------------------------------------------------------------------
# the migration


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            f"SmoothQuant alpha must be in [0, 1], got {alpha}",
            "0.5 is the paper's default; 0.75-0.85 for models with strong activation outliers",
        )


def _weight_in_major(lin: nn.Module) -> torch.Tensor:
    """Weight as [out, in] (GPT-2's Conv1D stores [in, out])."""
    w = lin.weight
    return w.t() if type(lin).__name__ == "Conv1D" else w


def smoothing_factors(
    x_absmax: torch.Tensor, weights: Iterable[torch.Tensor], alpha: float = 0.5
) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha); weights as [out, in], maxed over all of them."""
    _check_alpha(alpha)
    check_finite(x_absmax, "activation statistics")
    w_absmax = torch.stack([w.detach().abs().float().amax(0) for w in weights]).amax(0)
    if w_absmax.shape != x_absmax.shape:
        raise ConfigError(
            f"activation stats have {x_absmax.numel()} channels, weights {w_absmax.numel()}",
            "smooth a norm together with the linears that read its output",
        )
    eps = 1e-5
    s = x_absmax.float().clamp(min=eps).pow(alpha) / w_absmax.clamp(min=eps).pow(1.0 - alpha)
    return s.clamp(min=eps)


@torch.no_grad()
def divide_norm_(norm: nn.Module, s: torch.Tensor, offset: float = 0.0) -> None:
    """Make ``norm``'s output channels 1/s as large, in place.

    A norm scales by ``offset + weight``: 0 for most, 1 for Gemma's ``x * (1 + w)`` RMSNorm, where
    dividing the stored weight alone would leave the ``1`` part unscaled; so
    ``w <- (offset + w) / s - offset``.
    """
    if getattr(norm, "weight", None) is None:
        raise UnsupportedArchitectureError(
            f"{type(norm).__name__} has no weight to fold the scaling factors into",
            "fold into an affine norm (RMSNorm/LayerNorm) before the linears",
        )
    w = norm.weight
    w.copy_((w.double() + offset).div(s.double()).sub(offset).to(w.dtype))
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(s.to(norm.bias.dtype))


@torch.no_grad()
def smooth_pair(
    norm: nn.Module,
    linears: list[nn.Module],
    x_absmax: torch.Tensor,
    alpha: float = 0.5,
    norm_offset: float = 0.0,
) -> torch.Tensor:
    """Fold 1/s into ``norm`` (weight and bias) and s into every reader's weight columns.

    The block's function is unchanged in exact arithmetic; returns s.
    """
    s = smoothing_factors(x_absmax, [_weight_in_major(lin) for lin in linears], alpha)
    divide_norm_(norm, s, norm_offset)
    for lin in linears:
        if type(lin).__name__ == "Conv1D":
            lin.weight.mul_(s.to(lin.weight.dtype)[:, None])
        else:
            lin.weight.mul_(s.to(lin.weight.dtype)[None, :])
    return s


def block_pairs(arch: Any, ignore: Iterable[str] = ()) -> list[tuple[str, list[str]]]:
    """(norm, [reader linears]) inside one block, block-relative, from the arch map roles:
    attn_norm → q/k/v (or fused qkv), mlp_norm → mlp_in (gate/up or fc1)."""
    if arch.post_norm:
        raise UnsupportedArchitectureError(
            f"SmoothQuant folds into the norm before q/k/v; {arch.family} normalises after "
            "the residual add, so no norm reads only into those linears",
            "use a pre-norm family (llama, qwen3, gemma3, phi3, opt, gpt2) or weight-only quantization",
        )
    ignore = list(ignore)
    qkv = [arch.roles["qkv"]] if "qkv" in arch.roles else [arch.roles[r] for r in ("q", "k", "v")]
    pairs = []
    for norm_role, readers in (("attn_norm", qkv), ("mlp_norm", list(arch.roles["mlp_in"]))):
        if any(n == pat or n.endswith("." + pat) for n in readers for pat in ignore):
            continue
        pairs.append((arch.roles[norm_role], list(readers)))
    return pairs


def _smooth_block(
    step: Any, pairs: list[tuple[str, list[str]]], alpha: float, norm_offset: float = 0.0
) -> list[tuple[float, float]]:
    """Collect max|x| of each norm's output on the block's calibration inputs, then fold."""
    blk = step.block
    readers = {names[0]: blk.get_submodule(names[0]) for _, names in pairs}
    stats: dict[str, torch.Tensor] = {}

    def fn(name: str, _m: nn.Module, x: torch.Tensor, _out: Any) -> None:
        check_finite(x, f"input of {step.name}.{name}")
        m = x.detach().abs().float().reshape(-1, x.shape[-1]).amax(0)
        stats[name] = m if name not in stats else torch.maximum(stats[name], m)

    with step.capture(readers, fn):
        step.run()
    ratios = []
    for norm_name, names in pairs:
        x_max = stats[names[0]]
        s = smooth_pair(
            blk.get_submodule(norm_name),
            [blk.get_submodule(n) for n in names],
            x_max,
            alpha,
            norm_offset,
        )
        after = x_max / s  # how much flatter the activation got: max/median channel magnitude
        ratios.append(
            (
                float(x_max.max() / x_max.median().clamp(min=1e-8)),
                float(after.max() / after.median().clamp(min=1e-8)),
            )
        )
    return ratios


@torch.no_grad()
def smooth(
    model: nn.Module,
    calib_ids: torch.Tensor,
    alpha: float = 0.5,
    ignore: Iterable[str] = (),
    batch_size: int = 4,
) -> dict[str, Any]:
    """SmoothQuant migration on every pre-norm block of ``model``, in place; returns a record.

    Runs on the calibration engine (one block at a time); smoothing leaves each block's output
    unchanged, so the next block sees the same activations as in the original model.
    """
    from slimline.calib import run_blocks
    from slimline.models.arch import get_arch

    _check_alpha(alpha)
    _batches(calib_ids, batch_size)
    arch = get_arch(model)
    pairs = block_pairs(arch, ignore)
    ratios: list[tuple[float, float]] = []

    def on_block(step: Any) -> dict[str, Any]:
        r = _smooth_block(step, pairs, alpha, arch.norm_offset)
        ratios.extend(r)
        return (
            {
                "outlier_ratio_before": max(x[0] for x in r),
                "outlier_ratio_after": max(x[1] for x in r),
            }
            if r
            else {}
        )

    run_blocks(model, calib_ids, on_block, batch_size=batch_size, desc="SmoothQuant")
    return {
        "alpha": alpha,
        "pairs": len(ratios),
        "outlier_ratio_before": max(r[0] for r in ratios) if ratios else None,
        "outlier_ratio_after": max(r[1] for r in ratios) if ratios else None,
    }


class SmoothQuant(TechniqueConfig):
    """Migrate activation outliers into the weights (no quantization by itself)."""

    kind: ClassVar[str] = "quant.smoothquant"
    needs: ClassVar[frozenset[Need]] = frozenset({"calib"})
    alpha: float = 0.5
    ignore: list[str] = Field(default_factory=list)
    batch_size: int = 4

    def size_effect(self) -> SizeEffect:
        """Rescales weights; their width and count stay."""
        return SizeEffect()

    @field_validator("alpha")
    @classmethod
    def _alpha_in_unit(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {v}")
        return v


def _calib(ctx: Context, what: str) -> torch.Tensor:
    if ctx.calib is None:
        raise DataError(
            f"{what} needs calibration data and the context has none",
            "set ctx.calib = slimline.data.calibration_blocks(tokenizer, n=32, seq_len=512)",
        )
    return ctx.calib


@register_technique(SmoothQuant)
def apply_smoothquant(model: nn.Module, cfg: SmoothQuant, ctx: Context) -> dict[str, Any]:
    """SmoothQuant: fold per-channel smoothing factors into the pre-norms of q/k/v and gate/up."""
    return smooth(model, _calib(ctx, "quant.smoothquant"), cfg.alpha, cfg.ignore, cfg.batch_size)


# ---------------------------------------------------------------------------------------------
# int8 x int8 linear

_CHUNK = 1024  # 1024 * 128 * 127 < 2^24: an fp32 dot product over one chunk of int8 values is exact


def int8_matmul(xq: torch.Tensor, wq: torch.Tensor, backend: str = "sim") -> torch.Tensor:
    """Exact int32 result of ``xq @ wq.T`` (int8 [T, C] x int8 [O, C]), returned as float64/32."""
    if backend == "int_mm":
        if xq.shape[0] <= 16:  # _int_mm wants more than 16 rows
            pad = torch.zeros(17 - xq.shape[0], xq.shape[1], dtype=torch.int8, device=xq.device)
            return torch._int_mm(torch.cat([xq, pad]), wq.t())[: xq.shape[0]].float()
        return torch._int_mm(xq, wq.t()).float()
    xf, wf = xq.float(), wq.float()
    C = xq.shape[1]
    if C <= _CHUNK:
        return xf @ wf.t()
    acc = None
    for c0 in range(0, C, _CHUNK):  # exact partial sums, added in float64 so they stay exact
        part = (xf[:, c0 : c0 + _CHUNK] @ wf[:, c0 : c0 + _CHUNK].t()).double()
        acc = part if acc is None else acc + part
    return acc.float()


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of [T, C]: (int8 values, scale [T, 1])."""
    scale = (x.abs().amax(-1, keepdim=True) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.clamp(torch.round(x / scale), -128, 127).to(torch.int8), scale


BACKENDS = ("sim", "int_mm", "fbgemm")


def _check_backend(backend: str, act: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown W8A8 backend {backend!r}", f"use one of {list(BACKENDS)}")
    if backend == "fbgemm":
        if act != "dynamic":
            raise ConfigError(
                "the fbgemm backend quantizes activations at run time (act='dynamic') only",
                "use act='dynamic' with backend='fbgemm', or backend='sim' for static scales",
            )
        if not {"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines):
            raise ConfigError(
                "this torch build has no fbgemm/x86 quantized engine",
                "use backend='sim' (same accuracy, fp32 speed)",
            )


@register_codec
class W8A8Linear(nn.Module, Codec):
    """int8 weight (per output channel, symmetric) x int8 activation (per token, or static).

    ``act="dynamic"``: one scale per token computed at run time. ``act="static"``: one per-tensor
    scale fixed by an observer on calibration data (a deployable static graph).
    """

    codec: ClassVar[str] = "quant.w8a8"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        act: Literal["dynamic", "static"] = "dynamic",
        backend: Literal["sim", "int_mm", "fbgemm"] = "sim",
    ):
        super().__init__()
        if act not in ("dynamic", "static"):
            raise ConfigError(f"unknown activation mode {act!r}", "use 'dynamic' or 'static'")
        _check_backend(backend, act)
        self._packed: Any = None  # fbgemm's prepacked weight, built on first use
        self.in_features, self.out_features = in_features, out_features
        self.act, self.backend = act, backend
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("w_scale", torch.ones(out_features))
        self.register_buffer("act_scale", torch.ones(()))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls,
        lin: nn.Linear,
        act: Literal["dynamic", "static"] = "dynamic",
        act_scale: torch.Tensor | float | None = None,
        backend: Literal["sim", "int_mm", "fbgemm"] = "sim",
    ) -> W8A8Linear:
        w = lin.weight.detach().float()
        check_finite(w, "weight")
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, act, backend)
        w_scale = (w.abs().amax(1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
        m.qweight.copy_(torch.clamp(torch.round(w / w_scale[:, None]), -127, 127).to(torch.int8))
        m.w_scale.copy_(w_scale)
        if lin.bias is not None:
            m.bias.copy_(lin.bias.detach().float())
        if act == "static":
            if act_scale is None:
                raise ConfigError(
                    "a static W8A8 layer needs an activation scale",
                    "calibrate it with an observer (quant.w8a8 with act='static' does this)",
                )
            m.act_scale.fill_(float(act_scale))
        return m.to(lin.weight.device)

    def set_backend(self, backend: str) -> None:
        """Switch the int8 kernel (same weights, same stored artifact)."""
        _check_backend(backend, self.act)
        self.backend, self._packed = backend, None

    def _fbgemm_weight(self) -> Any:
        if self._packed is None:
            with warnings.catch_warnings():  # torch marks quantized tensors deprecated (2.13)
                warnings.simplefilter("ignore", UserWarning)
                qw = torch._make_per_channel_quantized_tensor(
                    self.qweight.cpu(),
                    self.w_scale.double().cpu(),
                    torch.zeros(self.out_features, dtype=torch.long),
                    0,
                )
                self._packed = torch.ops.quantized.linear_prepack(qw, None)
        return self._packed

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = None  # rebuilt from qweight on first use after a copy
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        if self.backend == "fbgemm":
            # fbgemm takes one activation range per call; rows scaled to max|x| = 1 first make
            # that range per token (W (x / s) s = W x), so a prompt keeps per-token accuracy
            s = x2.abs().amax(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
            y = torch.ops.quantized.linear_dynamic(x2 / s, self._fbgemm_weight(), True) * s
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*shape[:-1], self.out_features).to(x.dtype)
        if self.act == "dynamic":
            xq, xs = quantize_per_token(x2)
        else:
            xs = self.act_scale
            xq = torch.clamp(torch.round(x2 / xs), -128, 127).to(torch.int8)
        acc = int8_matmul(xq, self.qweight, self.backend)
        y = acc * xs * self.w_scale[None, :]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, act={self.act}, backend={self.backend}"

    def pack(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"qweight": self.qweight, "w_scale": self.w_scale, "act_scale": self.act_scale}
        if self.bias is not None:
            tensors["bias"] = self.bias
        meta = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "act": self.act,
            "backend": self.backend,
            "bias": self.bias is not None,
        }
        return tensors, meta

    @classmethod
    def unpack(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> nn.Module:
        m = cls(
            meta["in_features"], meta["out_features"], meta["bias"], meta["act"], meta["backend"]
        )
        for k, v in tensors.items():
            getattr(m, k).copy_(v)
        return m


class W8A8(TechniqueConfig):
    """int8 weights + int8 activations on every selected Linear, optionally after SmoothQuant."""

    kind: ClassVar[str] = "quant.w8a8"
    act: Literal["dynamic", "static"] = "dynamic"
    observer: Literal["minmax", "percentile", "mse"] = "mse"
    smooth_alpha: float | None = 0.5
    backend: Literal["sim", "int_mm", "fbgemm"] = "sim"
    targets: list[str] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"])
    batch_size: int = 4

    def size_effect(self) -> SizeEffect:
        """int8 codes per weight."""
        return SizeEffect(bits=8)

    def requires(self) -> frozenset[Need]:
        """Calibration data for smoothing or static activation scales; none otherwise."""
        return (
            frozenset({"calib"})
            if self.smooth_alpha is not None or self.act == "static"
            else frozenset()
        )

    @field_validator("smooth_alpha")
    @classmethod
    def _alpha_in_unit(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"smooth_alpha must be in [0, 1] or null, got {v}")
        return v

    @model_validator(mode="after")
    def _backend_fits_act(self) -> W8A8:
        if self.backend == "fbgemm" and self.act != "dynamic":
            raise ValueError("backend 'fbgemm' quantizes activations at run time: use act: dynamic")
        return self


def set_w8a8_backend(model: nn.Module, backend: str) -> int:
    """Switch every ``W8A8Linear`` of ``model`` to ``backend``; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, W8A8Linear)]
    for m in layers:
        m.set_backend(backend)
    return len(layers)


@torch.no_grad()
def quantize_w8a8(
    model: nn.Module,
    calib_ids: torch.Tensor | None,
    cfg: W8A8 | None = None,
) -> dict[str, Any]:
    """Replace the blocks' Linears by ``W8A8Linear`` (after SmoothQuant when ``smooth_alpha`` is set).

    With calibration needs (smoothing or static scales), runs block by block on the calibration
    engine: each block is smoothed, its linears' input ranges observed, then quantized, and the
    quantized block's outputs feed the next block (later ranges see the real upstream error).
    """
    from slimline.calib import run_blocks
    from slimline.models.arch import get_arch

    cfg = cfg or W8A8()
    needs_calib = cfg.smooth_alpha is not None or cfg.act == "static"
    arch = get_arch(model)
    n_layers = 0
    if not needs_calib:
        sel = select_modules(model, cfg.targets, cfg.ignore, within=[arch.block_prefix(model)])
        sel = {n: m for n, m in sel.items() if isinstance(m, nn.Linear)}
        require_selection(sel, cfg.targets, "quantize to W8A8")
        for name, lin in sel.items():
            set_submodule(model, name, W8A8Linear.from_linear(lin, cfg.act, None, cfg.backend))
        return {"layers": len(sel), "act": cfg.act, "backend": cfg.backend}
    if calib_ids is None:
        raise DataError(
            "W8A8 with SmoothQuant or static activation scales needs calibration data",
            "pass calib_ids (slimline.data.calibration_blocks), or act='dynamic' and smooth_alpha=None",
        )
    _batches(calib_ids, cfg.batch_size)
    pairs = block_pairs(arch, cfg.ignore) if cfg.smooth_alpha is not None else []
    ratios: list[tuple[float, float]] = []

    def on_block(step: Any) -> dict[str, Any]:
        nonlocal n_layers
        if pairs:
            ratios.extend(_smooth_block(step, pairs, cfg.smooth_alpha))
        lins = {
            n: m
            for n, m in step.linears(cfg.targets, cfg.ignore).items()
            if isinstance(m, nn.Linear)
        }
        scales: dict[str, torch.Tensor] = {}
        if cfg.act == "static":
            obs = {n: make_observer(cfg.observer, 8, True, "tensor") for n in lins}
            with step.capture(lins, lambda n, _m, x, _o: obs[n].observe(x)):
                step.run()
            scales = {n: obs[n].qparams()[0] for n in lins}
        prefix = step.name + "."
        for name, lin in lins.items():
            set_submodule(
                step.block,
                name[len(prefix) :],
                W8A8Linear.from_linear(lin, cfg.act, scales.get(name), cfg.backend),
            )
        n_layers += len(lins)
        return {"layers": len(lins)}

    run_blocks(model, calib_ids, on_block, batch_size=cfg.batch_size, desc="W8A8")
    if n_layers == 0:
        require_selection({}, cfg.targets, "quantize to W8A8")
    record: dict[str, Any] = {"layers": n_layers, "act": cfg.act, "backend": cfg.backend}
    if ratios:
        record["smoothquant"] = {
            "alpha": cfg.smooth_alpha,
            "pairs": len(ratios),
            "outlier_ratio_before": max(r[0] for r in ratios),
            "outlier_ratio_after": max(r[1] for r in ratios),
        }
    return record


@register_technique(W8A8)
def apply_w8a8(model: nn.Module, cfg: W8A8, ctx: Context) -> dict[str, Any]:
    """W8A8: int8 weights and int8 activations (dynamic per token or static), SmoothQuant first."""
    needs = cfg.smooth_alpha is not None or cfg.act == "static"
    return quantize_w8a8(model, _calib(ctx, "quant.w8a8") if needs else ctx.calib, cfg)
