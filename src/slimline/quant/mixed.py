"""Mixed precision: per-layer bit widths chosen by measured sensitivity under a size budget.

Layers differ by orders of magnitude in how much their quantization hurts (SmolLM2's down
projections and first blocks more than the rest), so one bit width for all wastes bits where
they buy nothing. Three steps:

1. ``layer_sensitivity``: for every selected Linear and every bit width, the error when only
   that layer is quantized. ``metric="output"`` (default) is the layer's output error
   ``tr(dW H dW^T) / n_tokens`` with ``H = X^T X`` from calibration inputs, collected one block
   at a time on the calibration engine (HAWQ-style proxy; cheap: one pass). ``metric="kl"`` is
   the KL divergence of the whole model's next-token distribution from the fp model's (the
   end-to-end effect; one forward per layer and width: for small models). Calibration NLL was
   tried first and rejected: on a truncated model quantization noise often *lowered* it.
2. ``allocate_bits``: the multiple-choice knapsack — minimise the summed sensitivity subject to
   total size <= budget — solved exactly by dynamic programming over sizes in units of their
   greatest common divisor (exact for real models: SmolLM2's layer sizes share large factors);
   above ``max_states`` units it rounds costs up to a coarser unit (budget still met, optimum
   approximate, and the record says so).
3. ``apply_allocation`` rounds each weight onto its grid (``grid.fake_quantize``), and
   ``allocation_table`` / ``plot_allocation`` show the choice (rich table, blocks x roles PNG).

Size model: exactly what ``QuantLinear`` stores — packed codes, an fp32 scale per group and a
uint8 zero per group when asymmetric (bias excluded: it is the same at every width).

**Engine grids** (``grids=["gguf-q8_0", "gguf-q4_k", "gguf-q4_0"]``): the options are GGUF block
types instead of bit widths, as llama.cpp's Q4_K_M mixes them per tensor. Sensitivity is measured
on each grid's own scheme, an option costs what the GGUF file stores (``GGUF_BLOCK_BYTES``: codes
plus block scales/minimums, e.g. Q4_K 4.5 bits per weight), a layer whose input width the block
cannot tile (K-quants: 256, the others: 32) does not get that option, and each layer is quantized
on its grid exactly as ``quant.rtn`` with ``grid:`` would, so GGUF export writes it bit-exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from slimline.core import (
    Context,
    Need,
    SizeEffect,
    TechniqueConfig,
    register_technique,
    require_selection,
    select_modules,
)
from slimline.errors import ConfigError, DataError, TargetError
from slimline.figures import save_png
from slimline.progress import track
from slimline.quant.grid import GRIDS, SUPER_BLOCK, QuantScheme, fake_quantize, make_scheme

# (weights, bytes) per block of each GGUF type: ggml-common.h's block_q8_0 (fp16 d + 32 int8),
# block_q6_K (128 B low bits + 64 B high bits + 16 int8 scales + fp16 d), block_q5_K / block_q4_K
# (fp16 d, dmin + 12 B of 6-bit scales/mins + codes), block_q5_0/q5_1/q4_0/q4_1 (fp16 d [, m] +
# codes [+ 4 B high bits]); the same numbers as gguf.constants.GGML_QUANT_SIZES
GGUF_BLOCK_BYTES: dict[str, tuple[int, int]] = {
    "gguf-q8_0": (32, 34),  # 8.5 bits per weight
    "gguf-q6_k": (256, 210),  # 6.5625
    "gguf-q5_k": (256, 176),  # 5.5
    "gguf-q5_0": (32, 22),  # 5.5
    "gguf-q5_1": (32, 24),  # 6.0
    "gguf-q4_k": (256, 144),  # 4.5
    "gguf-q4_0": (32, 18),  # 4.5
    "gguf-q4_1": (32, 20),  # 5.0
}


def layer_bits_cost(
    shape: tuple[int, int], bits: int, group_size: int | None, symmetric: bool = False
) -> int:
    """Storage in bits of one [out, in] weight packed as ``QuantLinear`` stores it: the packed
    codes (``pack.packed_nbytes``), an fp32 scale per group and, asymmetric, a uint8 zero."""
    from slimline.quant.pack import packed_nbytes

    out, inp = shape
    groups = 1 if group_size is None else math.ceil(inp / min(group_size, inp))
    return packed_nbytes(out * inp, bits) * 8 + out * groups * (32 + (0 if symmetric else 8))


def grid_fits(grid: str, in_features: int) -> bool:
    """Whether GGUF blocks of ``grid`` tile a layer's input width (K-quants 256, others 32)."""
    return in_features % (SUPER_BLOCK.get(grid) or GRIDS[grid][1]) == 0


def grid_bits_cost(shape: tuple[int, int], grid: str) -> int:
    """Storage in bits of one [out, in] weight as GGUF blocks of ``grid`` (metadata included)."""
    out, inp = shape
    n, nbytes = GGUF_BLOCK_BYTES[grid]
    if inp % n:
        raise ConfigError(
            f"{grid} stores whole blocks of {n} weights; a layer with {inp} inputs does not fit",
            "leave that grid out for this layer",
        )
    return out * (inp // n) * nbytes * 8


def _check_grids(grids: Sequence[str]) -> list[str]:
    bad = [g for g in grids if g not in GRIDS]
    if bad or not grids:
        raise ConfigError(
            f"unknown grid {bad[0]!r}" if bad else "grids is empty",
            f"use some of: {', '.join(GRIDS)} (GGUF block types), e.g. [gguf-q8_0, gguf-q4_k]",
        )
    return list(dict.fromkeys(grids))


Option = int | str  # a bit width, or a GGUF grid name


@dataclass
class Sensitivity:
    """``errors[name][option]``: error when only ``name`` is quantized with ``option`` (a bit
    width, or a grid name when ``grids`` is set; a grid that cannot take the layer is absent)."""

    errors: dict[str, dict[Any, float]]
    shapes: dict[str, tuple[int, int]]
    metric: str
    group_size: int | None
    symmetric: bool
    bits_options: tuple[int, ...] = field(default=(8, 4, 3, 2))
    grids: tuple[str, ...] = ()

    @property
    def options(self) -> tuple[Option, ...]:
        """The choices per layer, widest (most bits per weight) first."""
        return self.grids or self.bits_options

    def cost(self, name: str, option: Option) -> int:
        """Bits stored for layer ``name`` with ``option``."""
        if isinstance(option, str):
            return grid_bits_cost(self.shapes[name], option)
        return layer_bits_cost(self.shapes[name], option, self.group_size, self.symmetric)


def _selected_linears(
    model: nn.Module, targets: Iterable[str] | None, ignore: Iterable[str] | None
) -> dict[str, nn.Linear]:
    from slimline.models.arch import get_arch

    within = None if targets else [get_arch(model).block_prefix(model)]
    sel = select_modules(model, targets, ignore, within=within)
    sel = {n: m for n, m in sel.items() if isinstance(m, nn.Linear)}
    require_selection(sel, targets, "allocate bits to")
    return sel


def _schemes(
    bits_options: Sequence[int],
    group_size: int | None,
    symmetric: bool,
    grids: Sequence[str] | None = None,
) -> dict[Option, QuantScheme]:
    if grids is not None:  # widest first, by what the file stores per weight
        gs = sorted(
            _check_grids(grids), key=lambda g: -GGUF_BLOCK_BYTES[g][1] / GGUF_BLOCK_BYTES[g][0]
        )
        return {g: make_scheme(grid=g) for g in gs}
    if not bits_options:
        raise ConfigError("bits_options is empty", "use e.g. [8, 4, 3, 2]")
    return {
        b: make_scheme(b, group_size, symmetric) for b in sorted(set(bits_options), reverse=True)
    }


def _layer_schemes(
    w: torch.Tensor, schemes: dict[Option, QuantScheme]
) -> dict[Option, QuantScheme]:
    """The options a layer can take, each as the scheme it is quantized with."""
    return {
        o: s if s.grid is not None else _scheme_for(w, s)
        for o, s in schemes.items()
        if s.grid is None or grid_fits(s.grid, w.shape[1])
    }


def _scheme_for(w: torch.Tensor, scheme: QuantScheme) -> QuantScheme:
    # a group wider than the layer means per-channel for that layer
    if scheme.group_size is not None and scheme.group_size > w.shape[1]:
        return make_scheme(scheme.bits, None, scheme.symmetric)
    return scheme


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    calib_ids: torch.Tensor,
    bits_options: Sequence[int] = (8, 4, 3, 2),
    group_size: int | None = 64,
    symmetric: bool = False,
    targets: Iterable[str] | None = None,
    ignore: Iterable[str] | None = ("lm_head",),
    metric: Literal["output", "kl"] = "output",
    batch_size: int = 4,
    grids: Sequence[str] | None = None,
) -> Sensitivity:
    """Error of each selected layer quantized alone, at each bit width, or on each GGUF grid of
    ``grids`` that can take it (see module doc)."""
    schemes = _schemes(bits_options, group_size, symmetric, grids)
    sel = _selected_linears(model, targets, ignore)
    if grids is not None:
        none = [n for n, m in sel.items() if not any(grid_fits(g, m.in_features) for g in schemes)]
        if none:
            m = sel[none[0]]
            raise ConfigError(
                f"no grid of {list(schemes)} can take {none[0]} ({m.in_features} inputs"
                f"{f', and {len(none) - 1} more layers' if len(none) > 1 else ''}): K-quants "
                "need a multiple of 256, the others of 32",
                "add a 32-weight grid (gguf-q8_0, gguf-q5_0, gguf-q4_0 ...), or ignore those layers",
            )
    if calib_ids is None or calib_ids.ndim != 2 or calib_ids.shape[0] == 0:
        raise DataError(
            "sensitivity needs calibration data as a non-empty [N, T] tensor of token ids",
            "use slimline.data.calibration_blocks(tokenizer, n=16, seq_len=512)",
        )
    errors: dict[str, dict[int, float]] = {}
    if metric == "output":
        from slimline.calib import run_blocks

        def on_block(step: Any) -> dict[str, Any]:
            lins = {n: m for n, m in step.linears().items() if n in sel}
            if not lins:
                return {}
            H: dict[str, torch.Tensor] = {}
            count: dict[str, int] = {}

            def fn(name: str, _m: nn.Module, x: torch.Tensor, _o: Any) -> None:
                x2 = x.detach().reshape(-1, x.shape[-1]).double()
                if not torch.isfinite(x2).all():
                    raise DataError(
                        f"NaN/inf activations reach {name}", "check the model in fp32 on this data"
                    )
                H[name] = H.get(name, 0) + x2.t() @ x2
                count[name] = count.get(name, 0) + x2.shape[0]

            with step.capture(lins, fn):
                step.run()
            for name, lin in lins.items():
                w = lin.weight.detach().float()
                errors[name] = {}
                for b, sch in _layer_schemes(w, schemes).items():
                    dw = (fake_quantize(w, sch) - w).double()
                    errors[name][b] = float(((dw @ H[name]) * dw).sum() / count[name])
            return {"layers": len(lins)}

        run_blocks(model, calib_ids, on_block, batch_size=batch_size, desc="sensitivity")
    elif metric == "kl":
        batches = list(calib_ids.split(batch_size))
        ref = [model(input_ids=b, use_cache=False).logits.float().log_softmax(-1) for b in batches]

        def kl() -> float:  # KL(fp model || model with one layer quantized), mean per token
            tot, n = 0.0, 0
            for b, lp_ref in zip(batches, ref, strict=True):
                lp = model(input_ids=b, use_cache=False).logits.float().log_softmax(-1)
                tot += float((lp_ref.exp() * (lp_ref - lp)).sum())
                n += b.numel()
            return max(tot / n, 0.0)  # float32 round-off gives -1e-7 for identical outputs

        for name, lin in track(list(sel.items()), "sensitivity (KL)"):
            w0 = lin.weight.detach().clone()
            errors[name] = {}
            for b, sch in _layer_schemes(w0, schemes).items():
                lin.weight.copy_(fake_quantize(w0, sch))
                errors[name][b] = kl()
            lin.weight.copy_(w0)
    else:
        raise ConfigError(f"unknown sensitivity metric {metric!r}", "use 'output' or 'kl'")
    missing = [n for n in sel if n not in errors]
    if missing:
        raise ConfigError(
            f"{len(missing)} selected layers are outside the transformer blocks ({missing[0]}, ...)",
            "metric='output' covers the blocks' linears; use metric='kl' for others, or ignore them",
        )
    shapes = {n: (m.out_features, m.in_features) for n, m in sel.items()}
    opts = tuple(schemes)
    if grids is not None:
        return Sensitivity(errors, shapes, metric, None, False, (), tuple(map(str, opts)))
    return Sensitivity(errors, shapes, metric, group_size, symmetric, tuple(map(int, opts)))


@dataclass
class Allocation:
    """Chosen bits per layer and what it costs: size in bits, summed sensitivity, the budget.
    ``grids``: the GGUF grid of each layer when the options were grids (``bits`` its width)."""

    bits: dict[str, int]
    size_bits: int
    budget_bits: int
    min_size_bits: int
    total_error: float
    exact: bool
    group_size: int | None
    symmetric: bool

    @property
    def avg_bits(self) -> float:
        return self.size_bits / max(1, self.n_weights)

    n_weights: int = 0
    grids: dict[str, str] = field(default_factory=dict)

    def option(self, name: str) -> Option:
        """The option chosen for ``name``: its grid, else its bit width."""
        return self.grids.get(name, self.bits[name])

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits": dict(self.bits),
            **({"grids": dict(self.grids)} if self.grids else {}),
            "size_bytes": self.size_bits / 8,
            "budget_bytes": self.budget_bits / 8,
            "avg_bits_per_weight": self.avg_bits,
            "total_error": self.total_error,
            "exact": self.exact,
        }


def _costs(
    sens: Sensitivity,
) -> tuple[list[str], list[Option], np.ndarray, np.ndarray, np.ndarray]:
    """Layer names, options, and [layer, option] cost (bits), error and availability."""
    names = list(sens.errors)
    opts = list(sens.options)
    ok = np.array([[o in sens.errors[n] for o in opts] for n in names], dtype=bool)
    cost = np.array(
        [[sens.cost(n, o) if o in sens.errors[n] else 0 for o in opts] for n in names],
        dtype=np.int64,
    )
    err = np.array([[sens.errors[n].get(o, np.inf) for o in opts] for n in names])
    return names, opts, cost, err, ok


def _allocation(
    sens: Sensitivity,
    picks: dict[str, Option],
    size: int,
    budget_bits: int,
    min_size: int,
    total: float,
    exact: bool,
) -> Allocation:
    grids = {n: o for n, o in picks.items() if isinstance(o, str)}
    bits = {n: GRIDS[o][0] if isinstance(o, str) else o for n, o in picks.items()}
    n_weights = sum(o * i for o, i in sens.shapes.values())
    return Allocation(
        bits,
        size,
        budget_bits,
        min_size,
        total,
        exact,
        sens.group_size,
        sens.symmetric,
        n_weights,
        grids,
    )


def budget_from_avg_bits(sens: Sensitivity, avg_bits: float) -> int:
    """Budget in bits equal to ``avg_bits`` per weight (metadata included) over the selected layers."""
    return math.floor(avg_bits * sum(o * i for o, i in sens.shapes.values()))


def allocate_bits(sens: Sensitivity, budget_bits: int, max_states: int = 2_000_000) -> Allocation:
    """Minimise summed sensitivity with total size <= ``budget_bits`` (multiple-choice knapsack).

    Exact DP over sizes in units of the gcd of all costs when that needs at most ``max_states``
    units; otherwise costs are rounded up to a coarser unit (budget still met; ``exact=False``).
    """
    names, opts, cost, err, ok = _costs(sens)
    base = np.where(ok, cost, np.iinfo(np.int64).max).min(1, keepdims=True)
    min_size = int(base.sum())
    n_weights = sum(o * i for o, i in sens.shapes.values())
    if budget_bits < min_size:
        cheapest = "its cheapest grid" if sens.grids else f"{min(sens.bits_options)} bits"
        raise TargetError(
            f"size budget {budget_bits / 8:,.0f} bytes is below the smallest possible "
            f"{min_size / 8:,.0f} bytes (every layer at {cheapest}, "
            f"{min_size / n_weights:.3f} bits per weight)",
            f"raise the budget to at least {math.ceil(min_size / 8):,} bytes, or add a "
            f"{'smaller grid' if sens.grids else 'lower bit width'}",
        )
    # DP over the extra size above each layer's cheapest option, in units of their gcd: every
    # reachable total is a multiple of the unit, so flooring the slack to units loses nothing
    extra = np.where(ok, cost - base, 0)
    slack = budget_bits - min_size
    nz = extra[ok & (extra > 0)]
    unit = int(np.gcd.reduce(nz)) if nz.size else 1
    exact = True
    if slack // unit > max_states:
        unit = math.ceil(slack / max_states)
        exact = False
    units = -(-extra // unit)  # ceil: a rounded cost never underestimates the size
    S = slack // unit
    INF = np.inf
    dp = np.full(S + 1, INF)
    dp[0] = 0.0
    choice = np.zeros((len(names), S + 1), dtype=np.int8)
    for i in range(len(names)):
        new = np.full(S + 1, INF)
        pick = np.zeros(S + 1, dtype=np.int8)
        for j in range(len(opts)):
            c = int(units[i, j])
            if c > S or not ok[i, j]:
                continue
            cand = np.full(S + 1, INF)
            cand[c:] = dp[: S + 1 - c] + err[i, j]
            better = cand < new
            new[better] = cand[better]
            pick[better] = j
        dp = new
        choice[i] = pick
    s = int(np.argmin(dp))
    js: dict[str, int] = {}
    for i in range(len(names) - 1, -1, -1):
        j = int(choice[i, s])
        assert ok[i, j], names[i]
        js[names[i]] = j
        s -= int(units[i, j])
    size = int(sum(cost[i, js[n]] for i, n in enumerate(names)))
    total = float(sum(err[i, js[n]] for i, n in enumerate(names)))
    assert size <= budget_bits, (size, budget_bits)
    picks = {n: opts[js[n]] for n in names}
    return _allocation(sens, picks, size, budget_bits, min_size, total, exact)


def uniform_allocation(sens: Sensitivity, budget_bits: int) -> Allocation:
    """The baseline: the widest single option (bit width or grid) that every layer can take
    and that fits the budget, for every layer (equally wide grids: the lower error)."""
    names, opts, cost, err, ok = _costs(sens)
    min_size = int(np.where(ok, cost, np.iinfo(np.int64).max).min(1).sum())
    fits = [j for j in range(len(opts)) if ok[:, j].all() and cost[:, j].sum() <= budget_bits]
    if fits:
        j = max(fits, key=lambda j: (int(cost[:, j].sum()), -float(err[:, j].sum())))
        return _allocation(
            sens,
            dict.fromkeys(names, opts[j]),
            int(cost[:, j].sum()),
            budget_bits,
            min_size,
            float(err[:, j].sum()),
            True,
        )
    raise TargetError(
        f"no single {'grid' if sens.grids else 'bit width'} fits {budget_bits / 8:,.0f} bytes "
        f"(smallest: {min_size / 8:,.0f})",
        f"raise the budget to at least {math.ceil(min_size / 8):,} bytes",
    )


@torch.no_grad()
def apply_allocation(model: nn.Module, alloc: Allocation, pack: bool = True) -> int:
    """Quantize each allocated layer at its width (or on its GGUF grid), in place; returns the
    layer count.

    ``pack=True`` swaps in quant-A's ``QuantLinear`` (packed codes: the artifact really shrinks;
    on a grid, the same layer ``quant.rtn`` with ``grid:`` makes); ``pack=False`` keeps
    ``nn.Linear`` with the weight rounded onto its grid (same numbers).
    """
    from slimline.core import set_submodule

    for name, b in alloc.bits.items():
        lin = model.get_submodule(name)
        w = lin.weight.detach()
        g = alloc.grids.get(name)
        sch = (
            make_scheme(grid=g)
            if g is not None
            else _scheme_for(w, make_scheme(b, alloc.group_size, alloc.symmetric))
        )
        if pack:
            from slimline.quant.linear import QuantLinear

            set_submodule(model, name, QuantLinear.from_linear(lin, sch).to(w.device))
        else:
            lin.weight.copy_(fake_quantize(w, sch))
    return len(alloc.bits)


# --- showing the allocation ------------------------------------------------------------------


def _block_role(model: nn.Module | None, name: str) -> tuple[int | None, str]:
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return int(p), ".".join(parts[i + 1 :])
    return None, name


def allocation_table(alloc: Allocation, sens: Sensitivity | None = None) -> Any:
    """A rich table: layer, bits (and grid, when grids were the options), and its sensitivity
    with the chosen option."""
    from rich.table import Table

    t = Table(
        title=f"mixed precision: {alloc.avg_bits:.3f} bits/weight, {alloc.size_bits / 8 / 1e6:.3f} MB"
    )
    t.add_column("layer")
    t.add_column("bits", justify="right")
    if alloc.grids:
        t.add_column("grid")
    if sens is not None:
        t.add_column("error at grid" if alloc.grids else "error at bits", justify="right")
    for name, b in alloc.bits.items():
        row = [name, str(b)]
        if alloc.grids:
            row.append(alloc.grids.get(name, "-"))
        if sens is not None:
            row.append(f"{sens.errors[name][alloc.option(name)]:.3e}")
        t.add_row(*row)
    return t


def plot_allocation(alloc: Allocation, path: str | Path) -> Path:
    """Heat map PNG of bits per (block, layer role), cells labelled with the grid when grids
    were the options; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    cells = [(*_block_role(None, n), b) for n, b in alloc.bits.items()]
    labels = {_block_role(None, n): g.removeprefix("gguf-") for n, g in alloc.grids.items()}
    blocks = sorted({c[0] for c in cells if c[0] is not None})
    roles = list(dict.fromkeys(c[1] for c in cells))
    grid = np.full((len(blocks) or 1, len(roles)), np.nan)
    for blk, role, b in cells:
        grid[blocks.index(blk) if blk is not None else 0, roles.index(role)] = b
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(roles), 1.0 + 0.3 * max(1, len(blocks))))
    im = ax.imshow(
        grid,
        cmap="viridis",
        aspect="auto",
        vmin=min(alloc.bits.values()),
        vmax=max(alloc.bits.values()),
    )
    ax.set_xticks(range(len(roles)), [r.split(".")[-1] for r in roles], rotation=45, ha="right")
    ax.set_yticks(range(len(blocks) or 1), [str(b) for b in blocks] or ["-"])
    ax.set_ylabel("block")
    what = "GGUF grid" if alloc.grids else "bits"
    ax.set_title(f"{what} per layer ({alloc.avg_bits:.2f} bits/weight avg)")
    for (r, c), v in np.ndenumerate(grid):
        if not np.isnan(v):
            key = (blocks[r] if blocks else None, roles[c])
            text = labels.get(key, int(v))
            ax.text(c, r, text, ha="center", va="center", color="w", fontsize=7)
    fig.colorbar(im, ax=ax, label="bits")
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


# --- technique -------------------------------------------------------------------------------


class MixedPrecision(TechniqueConfig):
    """Per-layer bit widths by sensitivity under a size budget, applied as grid weights.

    ``grids`` (``[gguf-q8_0, gguf-q4_k, gguf-q4_0]`` ...) makes GGUF block types the options
    instead of ``bits_options`` (a Q4_K_M-style mix that exports bit-exact); each grid fixes its
    own group and symmetry, so ``group_size``/``symmetric`` do not apply to it."""

    kind: ClassVar[str] = "quant.mixed"
    needs: ClassVar[frozenset[Need]] = frozenset({"calib"})
    bits_options: list[int] = Field(default_factory=lambda: [8, 4, 3, 2])
    grids: list[str] | None = None  # GGUF grids as the options (not with bits_options)
    avg_bits: float | None = 4.0  # budget as bits per weight (codes + group metadata)
    budget_bytes: int | None = None  # or as bytes of the selected layers (wins when set)
    group_size: int | None = 64
    symmetric: bool = False
    metric: Literal["output", "kl"] = "output"
    targets: list[str] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"])
    plot: str | None = None  # PNG path for the heat map (relative to ctx.workdir when set)
    pack: bool = True  # QuantLinear with packed codes; False: nn.Linear with grid-rounded weights
    batch_size: int = 4

    def size_effect(self) -> SizeEffect:
        """The fewest bits it may give a layer (packed), or none (``pack: false`` keeps floats)."""
        if not self.pack:
            return SizeEffect(bits=None)
        return SizeEffect(
            bits=min(GRIDS[g][0] for g in self.grids) if self.grids else min(self.bits_options)
        )

    @field_validator("bits_options")
    @classmethod
    def _bits(cls, v: list[int]) -> list[int]:
        bad = [b for b in v if b not in (2, 3, 4, 8)]
        if not v or bad:
            raise ValueError(f"bits_options must be a non-empty subset of [2, 3, 4, 8], got {v}")
        return v

    @field_validator("grids")
    @classmethod
    def _grids(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_grids(v)

    @model_validator(mode="after")
    def _grids_or_bits(self) -> MixedPrecision:
        if self.grids is not None and self.bits_options != [8, 4, 3, 2]:
            raise ConfigError(
                f"quant.mixed got both grids {self.grids} and bits_options {self.bits_options}",
                "give one: grids (GGUF block types) or bits_options (plain integer widths)",
            )
        return self


def mixed_precision(
    model: nn.Module,
    calib_ids: torch.Tensor,
    cfg: MixedPrecision | None = None,
    workdir: Path | None = None,
    apply: Callable[..., int] | None = None,
) -> dict[str, Any]:
    """Measure sensitivity, allocate bits under the budget, apply; returns a record.
    ``apply(model, alloc, pack)`` (default ``apply_allocation``) lets a streamed model
    (``slimline.calib.stream``) read each block back before quantizing it."""
    cfg = cfg or MixedPrecision()
    sens = layer_sensitivity(
        model,
        calib_ids,
        cfg.bits_options,
        cfg.group_size,
        cfg.symmetric,
        cfg.targets,
        cfg.ignore,
        cfg.metric,
        cfg.batch_size,
        cfg.grids,
    )
    if cfg.budget_bytes is not None:
        budget = int(cfg.budget_bytes) * 8
    elif cfg.avg_bits is not None:
        budget = budget_from_avg_bits(sens, cfg.avg_bits)
    else:
        raise ConfigError("quant.mixed needs a budget", "set avg_bits (e.g. 4.0) or budget_bytes")
    alloc = allocate_bits(sens, budget)
    (apply or apply_allocation)(model, alloc, cfg.pack)
    rec = alloc.to_dict()
    try:
        rec["uniform_error"] = uniform_allocation(sens, budget).total_error
    except TargetError:
        rec["uniform_error"] = None
    if cfg.plot:
        p = Path(cfg.plot)
        if workdir is not None and not p.is_absolute():
            p = workdir / p
        rec["plot"] = str(plot_allocation(alloc, p))
    return rec


@register_technique(MixedPrecision)
def apply_mixed(model: nn.Module, cfg: MixedPrecision, ctx: Context) -> dict[str, Any]:
    """Mixed precision: bits (or GGUF grids) per layer chosen by sensitivity under a size budget
    (exact knapsack)."""
    if ctx.calib is None:
        raise DataError(
            "quant.mixed needs calibration data to measure sensitivity",
            "set ctx.calib = slimline.data.calibration_blocks(tokenizer, n=16, seq_len=512)",
        )
    return mixed_precision(model, ctx.calib, cfg, ctx.workdir)
