"""Structured pruning with physical removal: attention heads, MLP channels, whole blocks.

Three separate pieces, as in Torch-Pruning: *what is coupled* comes from the arch map
(``slimline.models.arch``: q/k/v/o, mlp_in/mlp_out, config keys); *what to remove* from an
importance score on calibration data; *how to cut* is a slice of rows/columns of each coupled
linear. The tensors really shrink, the HF config is rewritten, and every edit is appended to a
replayable log (``replay(model, log)`` repeats it on a fresh copy of the parent model).

Grouped-query attention: query head h reads kv head h // g (g = heads per kv group). Either
whole kv groups go (their k/v rows and all their query heads), or the same number of query heads
goes from every group; both keep ``num_attention_heads / num_key_value_heads`` an integer. Every
block keeps the same counts, because an HF config holds one value per field.

Block influence (ShortGPT, Men et al. 2024; Gromov et al. 2024): a block whose output points the
same way as its input does little; its angular distance arccos(cos(x_in, x_out))/pi is its score.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, Literal

import torch
from pydantic import field_validator
from torch import nn

from slimline.core import Context, Need, TechniqueConfig, register_technique
from slimline.errors import ConfigError, UnsupportedArchitectureError
from slimline.models.arch import Arch, get_arch


def _unwrap(model: Any) -> nn.Module:
    return model.model if not isinstance(model, nn.Module) and hasattr(model, "model") else model


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- how to cut --------------------------------------------------------------------------------


@torch.no_grad()
def _slice_linear(
    lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> nn.Linear:
    """A new Linear holding only the given output rows / input columns."""
    w = lin.weight
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
    if cols is not None:
        w = w.index_select(1, cols.to(w.device))
    new = nn.Linear(
        w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype
    )
    new.weight.copy_(w)
    new.weight.requires_grad_(lin.weight.requires_grad)
    if lin.bias is not None:
        b = lin.bias if rows is None else lin.bias.index_select(0, rows.to(w.device))
        new.bias.copy_(b)
        new.bias.requires_grad_(lin.bias.requires_grad)
    return new


def _set(block: nn.Module, rel: str, new: nn.Module) -> None:
    parent, _, child = rel.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, child, new)


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def check_width_pruning(arch: Arch) -> None:
    """Raise when heads / MLP channels of ``arch`` cannot be cut (the capability table asks too)."""
    if arch.conv1d:
        raise UnsupportedArchitectureError(
            f"structured pruning of {arch.family} heads or MLP channels is not supported "
            "(Conv1D weights stored [in, out])",
            "remove whole blocks (prune.blocks) or use a model with nn.Linear projections",
        )


def check_head_pruning(arch: Arch) -> None:
    """Raise when attention heads of ``arch`` cannot be removed with a loadable config."""
    check_width_pruning(arch)
    if arch.family == "bert":
        raise UnsupportedArchitectureError(
            "removing bert attention heads gives a config transformers refuses to load "
            "(hidden_size must divide by num_attention_heads)",
            "prune bert's MLP channels or blocks instead",
        )
    if arch.family == "opt":
        raise UnsupportedArchitectureError(
            "removing opt attention heads gives a model transformers cannot reload (OPT sizes "
            "q/k/v from hidden_size and has no head_dim field)",
            "prune opt's MLP channels or blocks instead",
        )


def _arch(model: nn.Module) -> Arch:
    arch = get_arch(model)
    check_width_pruning(arch)
    return arch


def _q_weight(arch: Arch, blk: nn.Module, config: Any) -> torch.Tensor:
    """The query rows, from a separate q or the q part of a fused qkv."""
    if "qkv" in arch.roles:
        return arch.linear(blk, "qkv").weight[arch.qkv_rows(config)[0]]
    return arch.linear(blk, "q").weight


def _mlp_in_weights(arch: Arch, blk: nn.Module, config: Any) -> list[torch.Tensor]:
    """[inter, hidden] weights reading the MLP input: gate and up (split if fused), or fc1."""
    ins = arch.linear(blk, "mlp_in")
    if arch.mlp_fused:
        w = ins[0].weight
        inter = arch.intermediate(config)
        return [w[:inter], w[inter:]]
    return [m.weight for m in ins]


# --- heads -------------------------------------------------------------------------------------


def _plan_heads(
    arch: Arch, config: Any, n_blocks: int, remove: dict[int, list[int]]
) -> tuple[int, int, dict[int, tuple[list[int], list[int]]]]:
    """Validate a head-removal plan; returns (new_heads, new_kv, block -> (kept q, kept kv))."""
    H, K = arch.n_heads(config), arch.n_kv_heads(config)
    g = H // K
    check_head_pruning(arch)
    if sorted(remove) != list(range(n_blocks)):
        raise ConfigError(
            f"head removal must name every block 0..{n_blocks - 1} (HF configs hold one head count)",
            "give the heads to remove for each block",
        )
    plan, shapes = {}, set()
    for b, heads in remove.items():
        hs = sorted(set(int(h) for h in heads))
        if any(not 0 <= h < H for h in hs):
            raise ConfigError(
                f"block {b}: head indices {hs} outside 0..{H - 1}", f"the model has {H} heads"
            )
        if len(hs) >= H:
            raise ConfigError(
                f"block {b}: removing {len(hs)} of {H} heads leaves none",
                "remove fewer heads (use prune.blocks to drop a whole block)",
            )
        kept_q = [h for h in range(H) if h not in hs]
        per_group = [sum(1 for h in kept_q if h // g == k) for k in range(K)]
        kept_kv = [k for k in range(K) if per_group[k] > 0]
        counts = {per_group[k] for k in kept_kv}
        if len(counts) != 1:
            raise ConfigError(
                f"block {b}: kv groups would keep {per_group} query heads — grouped-query attention "
                "needs the same number in every kept group",
                "remove whole kv groups, or the same number of query heads from every group",
            )
        shapes.add((len(kept_q), len(kept_kv)))
        plan[b] = (kept_q, kept_kv)
    if len(shapes) != 1:
        raise ConfigError(
            f"blocks would keep different head counts {sorted(shapes)}",
            "remove the same number of heads (and kv groups) from every block",
        )
    new_h, new_k = shapes.pop()
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("short_factor") is not None:
        # longrope (Phi-3 128k) validates its factor lists against hidden_size // heads
        raise UnsupportedArchitectureError(
            f"{arch.model_type} uses longrope scaling, whose config ties its factor lists to "
            "hidden_size // num_attention_heads: removing heads gives a config that does not load",
            "prune MLP channels or blocks of this model instead",
        )
    return new_h, new_k, plan


@torch.no_grad()
def remove_heads(model: Any, remove: dict[int, list[int]]) -> list[dict[str, Any]]:
    """Physically remove query heads ``remove[block]`` (whole kv groups go when all their heads
    go) and rewrite the config. Validates everything before the first edit. Returns the log."""
    model = _unwrap(model)
    arch = _arch(model)
    config = model.config
    blocks = arch.blocks(model)
    hd = arch.head_dim(config)
    new_h, new_k, plan = _plan_heads(arch, config, len(blocks), remove)
    H, K = arch.n_heads(config), arch.n_kv_heads(config)
    g = H // K
    log = []
    for b, (kept_q, kept_kv) in plan.items():
        blk = blocks[b]
        rows_q = _head_rows(kept_q, hd)
        rows_kv = _head_rows(kept_kv, hd)
        if "qkv" in arch.roles:  # Phi-3: one linear holds [q; k; v] rows
            qkv = arch.linear(blk, "qkv")
            rows = torch.cat([rows_q, H * hd + rows_kv, (H + K) * hd + rows_kv])
            _set(blk, arch.roles["qkv"], _slice_linear(qkv, rows=rows))
        else:
            q, k, v = (arch.linear(blk, r) for r in ("q", "k", "v"))
            _set(blk, arch.roles["q"], _slice_linear(q, rows=rows_q))
            _set(blk, arch.roles["k"], _slice_linear(k, rows=rows_kv))
            _set(blk, arch.roles["v"], _slice_linear(v, rows=rows_kv))
        _set(blk, arch.roles["o"], _slice_linear(arch.linear(blk, "o"), cols=rows_q))
        attn = blk.get_submodule(arch.roles["o"].rpartition(".")[0])
        if hasattr(attn, "num_key_value_groups"):
            attn.num_key_value_groups = new_h // new_k
        for attr, val in (("num_heads", new_h), ("num_key_value_heads", new_k)):
            if hasattr(attn, attr):
                setattr(attn, attr, val)
        removed = [h for h in range(H) if h not in kept_q]
        log.append(
            {
                "op": "remove_heads",
                "block": b,
                "heads": removed,
                "kv_groups": [kk for kk in range(K) if kk not in kept_kv],
                "group_size_before": g,
            }
        )
    keys = arch.config_keys
    # explicit: hidden // heads no longer holds. Configs without the field (Phi-3, Qwen 2) still
    # read ``head_dim`` when present, and save it, so the reloaded model gets the same shapes.
    setattr(config, keys.get("head_dim") or "head_dim", hd)
    setattr(config, keys["n_heads"], new_h)
    if keys.get("n_kv_heads"):
        setattr(config, keys["n_kv_heads"], new_k)
    return log


@torch.no_grad()
def head_importance(
    model: nn.Module, ids: torch.Tensor | None, *, batch_size: int = 4
) -> torch.Tensor:
    """[blocks, heads] importance: the energy each head adds to the residual stream on ``ids``
    (||x_h W_o,hᵀ||² summed over tokens), or ||W_q,h||·||W_o,h|| without data."""
    arch = _arch(model)
    config = model.config
    H, hd = arch.n_heads(config), arch.head_dim(config)
    blocks = arch.blocks(model)
    if ids is None:
        rows = []
        for blk in blocks:
            q, o = _q_weight(arch, blk, config), arch.linear(blk, "o")
            qn = q.float().reshape(H, hd, -1).pow(2).sum((1, 2)).sqrt()
            on = o.weight.float().reshape(-1, H, hd).pow(2).sum((0, 2)).sqrt()
            rows.append(qn * on)
        return torch.stack(rows)
    from slimline.calib import run_blocks

    scores = torch.zeros(len(blocks), H, dtype=torch.float64)

    def on_block(step: Any) -> None:
        o = arch.linear(step.block, "o")

        def grab(_n: str, m: nn.Module, x: torch.Tensor, _y: Any) -> None:
            xh = x.detach().float().reshape(-1, H, hd)  # [tokens, H, hd]
            wo = m.weight.detach().float().reshape(-1, H, hd)  # [hidden, H, hd]
            y = torch.einsum("thd,ohd->tho", xh, wo)
            scores[step.index] += y.pow(2).sum((0, 2)).double().cpu()

        with step.capture({"o": o}, grab):
            step.outputs = step.forward()

    run_blocks(model, ids, on_block, batch_size=batch_size, desc="head importance")
    return scores.float()


def plan_head_removal(
    scores: torch.Tensor,
    n_kv_heads: int,
    *,
    amount: float | None = None,
    remove: int | None = None,
    unit: Literal["auto", "query", "kv_group"] = "auto",
) -> dict[int, list[int]]:
    """Pick the lowest-scoring heads per block under the GQA constraint.

    ``amount``: fraction of query heads per block; ``remove``: an exact count. ``query`` removes
    the same number from every kv group; ``kv_group`` removes whole groups (by summed score);
    ``auto`` prefers query-level when it can express the count.
    """
    n_blocks, H = scores.shape
    K = n_kv_heads
    g = H // K
    if (amount is None) == (remove is None):
        raise ConfigError(
            "give exactly one of amount (a fraction) or remove (a count)", "e.g. amount=0.25"
        )
    if amount is not None:
        if not 0 < amount < 1:
            raise ConfigError(f"head amount must be in (0, 1), got {amount}", "e.g. 0.25")
        remove = max(1, round(amount * H))
    assert remove is not None
    if not 0 < remove < H:
        raise ConfigError(
            f"cannot remove {remove} of {H} heads per block",
            f"remove between 1 and {H - 1} (prune.blocks drops whole blocks)",
        )
    if unit == "auto":
        unit = "query" if g > 1 and remove % K == 0 and remove // K < g else "kv_group"
        if unit == "kv_group" and remove % g:
            # round to what GQA can express: the nearest whole number per group
            per = max(1, min(g - 1, round(remove / K))) if g > 1 else 0
            if per:
                unit, remove = "query", per * K
            else:
                remove = max(1, min(K - 1, round(remove / g))) * g
    plan: dict[int, list[int]] = {}
    for b in range(n_blocks):
        s = scores[b]
        if unit == "query":
            if remove % K or remove // K >= g:
                raise ConfigError(
                    f"removing {remove} query heads cannot be spread evenly over {K} kv groups of {g}",
                    f"remove a multiple of {K} below {H}, or use unit='kv_group'",
                )
            per = remove // K
            out = []
            for k in range(K):
                grp = torch.arange(k * g, (k + 1) * g)
                out += grp[torch.topk(s[grp], per, largest=False).indices].tolist()
            plan[b] = sorted(out)
        elif unit == "kv_group":
            if remove % g or remove // g >= K:
                raise ConfigError(
                    f"removing {remove} heads is not a whole number of kv groups ({g} heads each) "
                    f"leaving at least one of {K}",
                    f"remove a multiple of {g} below {H}, or use unit='query'",
                )
            gs = s.reshape(K, g).sum(1)
            drop = torch.topk(gs, remove // g, largest=False).indices.tolist()
            plan[b] = sorted(h for k in drop for h in range(k * g, (k + 1) * g))
        else:
            raise ConfigError(f"unknown head unit {unit!r}", "use auto, query or kv_group")
    return plan


# --- MLP channels ------------------------------------------------------------------------------


@torch.no_grad()
def remove_mlp_channels(model: Any, remove: dict[int, list[int]]) -> list[dict[str, Any]]:
    """Remove intermediate channels ``remove[block]`` (mlp_in rows, mlp_out columns); every block
    must lose the same number. Validates before the first edit. Returns the log."""
    model = _unwrap(model)
    arch = _arch(model)
    config = model.config
    blocks = arch.blocks(model)
    inter = arch.intermediate(config)
    if sorted(remove) != list(range(len(blocks))):
        raise ConfigError(
            f"MLP channel removal must name every block 0..{len(blocks) - 1}",
            "give the channels to remove for each block (HF configs hold one intermediate_size)",
        )
    counts = set()
    clean = {}
    for b, ch in remove.items():
        cs = sorted(set(int(c) for c in ch))
        if any(not 0 <= c < inter for c in cs):
            raise ConfigError(
                f"block {b}: channel indices outside 0..{inter - 1}", "check the plan"
            )
        if len(cs) >= inter:
            raise ConfigError(
                f"block {b}: removing {len(cs)} of {inter} MLP channels leaves none",
                "remove fewer channels (use prune.blocks to drop a whole block)",
            )
        counts.add(len(cs))
        clean[b] = cs
    if len(counts) != 1:
        raise ConfigError(
            f"blocks would keep different MLP widths (removing {sorted(counts)})",
            "remove the same number of channels from every block",
        )
    log = []
    for b, cs in clean.items():
        blk = blocks[b]
        keep = torch.tensor([c for c in range(inter) if c not in set(cs)], dtype=torch.long)
        rows_in = torch.cat([keep, inter + keep]) if arch.mlp_fused else keep  # [gate; up]
        for rel in arch.roles["mlp_in"]:
            _set(blk, rel, _slice_linear(blk.get_submodule(rel), rows=rows_in))
        rel = arch.roles["mlp_out"]
        _set(blk, rel, _slice_linear(blk.get_submodule(rel), cols=keep))
        mlp = blk.get_submodule(arch.roles["mlp_out"].rpartition(".")[0] or "")
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(keep)
        log.append({"op": "remove_mlp_channels", "block": b, "channels": cs})
    setattr(config, arch.config_keys["intermediate"], inter - counts.pop())
    return log


@torch.no_grad()
def mlp_importance(
    model: nn.Module, ids: torch.Tensor | None, *, batch_size: int = 4
) -> torch.Tensor:
    """[blocks, intermediate] importance: ||X_j||₂ · ||W_down[:, j]||₂ (a channel's contribution
    to the block output, Wanda-style, summed over its column), or weight norms without data."""
    arch = _arch(model)
    blocks = arch.blocks(model)
    if ids is None:
        rows = []
        for blk in blocks:
            down = arch.linear(blk, "mlp_out").weight.float()
            ins = _mlp_in_weights(arch, blk, model.config)
            fan_in = sum(w.float().pow(2).sum(1) for w in ins).sqrt()
            rows.append(down.norm(dim=0) * fan_in)
        return torch.stack(rows)
    from slimline.calib import run_blocks

    inter = arch.intermediate(model.config)
    sumsq = torch.zeros(len(blocks), inter, dtype=torch.float64)

    def on_block(step: Any) -> None:
        down = arch.linear(step.block, "mlp_out")

        def grab(_n: str, _m: nn.Module, x: torch.Tensor, _y: Any) -> None:
            x2 = x.detach().reshape(-1, x.shape[-1]).double()
            sumsq[step.index] += x2.pow(2).sum(0).cpu()

        with step.capture({"down": down}, grab):
            step.outputs = step.forward()

    run_blocks(model, ids, on_block, batch_size=batch_size, desc="MLP importance")
    norms = torch.stack([arch.linear(b, "mlp_out").weight.float().norm(dim=0) for b in blocks])
    return sumsq.sqrt().float() * norms


# --- blocks ------------------------------------------------------------------------------------


@torch.no_grad()
def rank_blocks(
    model: Any, calib_ids: torch.Tensor, *, n: int = 1, batch_size: int = 4
) -> list[dict[str, Any]]:
    """Angular distance between the input of block ``i`` and the output of block ``i+n-1`` on
    ``calib_ids``, least important first: ``[{"block": i, "blocks": [...], "distance": d}, ...]``.

    n=1 is ShortGPT's block influence; n>1 is Gromov et al.'s search for a removable run.
    """
    model = _unwrap(model)
    from slimline.calib import run_blocks

    arch = get_arch(model)
    depth = len(arch.blocks(model))
    if not 1 <= n < depth:
        raise ConfigError(
            f"cannot rank runs of {n} of {depth} blocks", f"choose n in 1..{depth - 1}"
        )
    history: list[list[torch.Tensor]] = []
    dist: dict[int, float] = {}

    def angular(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
        tot, cnt = 0.0, 0
        for x, y in zip(xs, ys, strict=True):
            c = torch.nn.functional.cosine_similarity(x.double(), y.double(), dim=-1).clamp(-1, 1)
            tot += float(torch.arccos(c).sum()) / math.pi
            cnt += c.numel()
        return tot / max(cnt, 1)

    def on_block(step: Any) -> None:
        history.append([x.detach().clone() for x in step.inputs])
        outs = step.forward()
        step.outputs = outs
        start = step.index - n + 1
        if start >= 0:
            dist[start] = angular(history[start], outs)
            history[start] = []  # free what is no longer needed

    run_blocks(model, calib_ids, on_block, batch_size=batch_size, desc="block influence")
    ranked = sorted(dist.items(), key=lambda kv: kv[1])
    return [{"block": i, "blocks": list(range(i, i + n)), "distance": d} for i, d in ranked]


@torch.no_grad()
def remove_blocks(model: Any, indices: list[int]) -> list[dict[str, Any]]:
    """Delete whole blocks, renumber attention ``layer_idx`` (the KV cache slot), rewrite the
    config (block count, ``layer_types``). Returns the log."""
    model = _unwrap(model)
    arch = get_arch(model)
    blocks = arch.blocks(model)
    depth = len(blocks)
    idx = sorted(set(int(i) for i in indices))
    if not idx:
        raise ConfigError("no blocks to remove were given", "name at least one block index")
    if any(not 0 <= i < depth for i in idx):
        raise ConfigError(
            f"block indices {idx} outside 0..{depth - 1}", f"the model has {depth} blocks"
        )
    if len(idx) >= depth:
        raise ConfigError(
            f"removing {len(idx)} of {depth} blocks leaves none", f"remove at most {depth - 1}"
        )
    keep = [i for i in range(depth) if i not in idx]
    new = nn.ModuleList([blocks[i] for i in keep])
    for new_i, blk in enumerate(new):
        for mod in blk.modules():
            if hasattr(mod, "layer_idx") and isinstance(mod.layer_idx, int):
                mod.layer_idx = new_i
    parent, _, child = arch.block_path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    config = model.config
    setattr(config, arch.config_keys["n_blocks"], len(keep))
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    return [{"op": "remove_blocks", "blocks": idx}]


def replay(model: Any, log: list[dict[str, Any]]) -> None:
    """Repeat a structural edit log on (a fresh copy of) the model it was recorded on."""
    ops = {
        "remove_blocks": lambda e: remove_blocks(model, e["blocks"]),
    }
    pending_heads: dict[int, list[int]] = {}
    pending_mlp: dict[int, list[int]] = {}

    def flush() -> None:
        if pending_heads:
            remove_heads(model, dict(pending_heads))
            pending_heads.clear()
        if pending_mlp:
            remove_mlp_channels(model, dict(pending_mlp))
            pending_mlp.clear()

    for e in log:
        op = e.get("op")
        if op == "remove_heads":
            if pending_mlp:
                flush()
            pending_heads[int(e["block"])] = list(e["heads"])
        elif op == "remove_mlp_channels":
            if pending_heads:
                flush()
            pending_mlp[int(e["block"])] = list(e["channels"])
        elif op in ops:
            flush()
            ops[op](e)
        else:
            raise ConfigError(
                f"unknown structural edit {op!r} in the log", "record it with slimline"
            )
    flush()


# --- techniques --------------------------------------------------------------------------------


class _StructConfig(TechniqueConfig):
    """Structured pruning configs (invalid values raise ConfigError at construction)."""

    def requires(self) -> frozenset[Need]:
        """Calibration data for activation importance; magnitude needs none."""
        return (
            frozenset({"calib"}) if getattr(self, "importance", "") == "activation" else frozenset()
        )


class PruneHeads(_StructConfig):
    """Remove attention heads per block (GQA-consistent) by contribution on calibration data."""

    kind: ClassVar[str] = "prune.heads"
    amount: float | None = 0.25  # fraction of query heads per block
    remove: int | None = None  # or an exact count per block (overrides amount)
    unit: Literal["auto", "query", "kv_group"] = "auto"
    importance: Literal["activation", "magnitude"] = "activation"
    batch_size: int = 4

    @field_validator("amount")
    @classmethod
    def _a(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v < 1:
            raise ValueError(f"amount must be in (0, 1), got {v}")
        return v


class PruneMlp(_StructConfig):
    """Remove the least-used MLP channels per block (gate/up rows + down columns)."""

    kind: ClassVar[str] = "prune.mlp"
    amount: float = 0.25  # fraction of intermediate channels per block
    multiple_of: int = 1  # keep a width divisible by this (e.g. 8 or 64 for fast kernels)
    importance: Literal["activation", "magnitude"] = "activation"
    batch_size: int = 4

    @field_validator("amount")
    @classmethod
    def _a(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"amount must be in (0, 1), got {v}")
        return v


class PruneBlocks(_StructConfig):
    """Remove whole blocks with the least influence (angular distance input→output)."""

    kind: ClassVar[str] = "prune.blocks"
    remove: int = 1
    contiguous: bool = False  # Gromov et al.: drop the best run of `remove` consecutive blocks
    blocks: list[int] | None = None  # explicit indices instead of ranking
    batch_size: int = 4

    def requires(self) -> frozenset[Need]:
        """Calibration data to rank blocks; none when the blocks are named."""
        return frozenset() if self.blocks is not None else frozenset({"calib"})

    @field_validator("remove")
    @classmethod
    def _r(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"remove must be at least 1, got {v}")
        return v


def _data(ctx: Context, needed: bool) -> torch.Tensor | None:
    """The calibration blocks the caller supplied (``needs``); none are ever loaded here."""
    return ctx.calib if needed else None


def _record(model: nn.Module, before: int, log: list[dict[str, Any]], arch: Arch) -> dict[str, Any]:
    c = model.config
    return {
        "edits": log,
        "params_before": before,
        "params_after": _n_params(model),
        "config": {k: getattr(c, v) for k, v in arch.config_keys.items() if v and hasattr(c, v)},
    }


@register_technique(PruneHeads)
def apply_heads(model: nn.Module, cfg: PruneHeads, ctx: Context) -> dict[str, Any]:
    """Remove attention heads (whole kv groups or query heads evenly per group)."""
    model = _unwrap(model)
    arch = _arch(model)
    check_head_pruning(arch)
    before = _n_params(model)
    ids = _data(ctx, cfg.importance == "activation")
    if cfg.importance == "activation" and ids is None:
        raise ConfigError(
            "activation head importance needs calibration data",
            "pass data, or importance='magnitude'",
        )
    amount = None if cfg.remove is not None else cfg.amount
    plan = plan_head_removal(
        torch.zeros(arch.n_blocks(model.config), arch.n_heads(model.config)),
        arch.n_kv_heads(model.config),
        amount=amount,
        remove=cfg.remove,
        unit=cfg.unit,
    )  # validate the request before spending time on data
    scores = head_importance(
        model, ids if cfg.importance == "activation" else None, batch_size=cfg.batch_size
    )
    plan = plan_head_removal(
        scores, arch.n_kv_heads(model.config), amount=amount, remove=cfg.remove, unit=cfg.unit
    )
    n_heads = arch.n_heads(model.config)
    asked = cfg.remove if cfg.remove is not None else max(1, round(cfg.amount * n_heads))
    removed = len(next(iter(plan.values())))
    if removed != asked:
        # GQA can only drop the same number of query heads from every kv group (or whole groups):
        # say so instead of silently pruning more or less than asked (25% of 9 heads -> 3, 33%).
        warnings.warn(
            f"prune.heads: {asked} of {n_heads} query heads per block cannot be removed evenly "
            f"from {arch.n_kv_heads(model.config)} kv groups; removed {removed} "
            f"({removed / n_heads:.0%}) per block instead",
            stacklevel=2,
        )
    log = remove_heads(model, plan)
    rec = _record(model, before, log, arch)
    rec["heads_removed_per_block"] = {"asked": asked, "removed": removed, "of": n_heads}
    return rec


@register_technique(PruneMlp)
def apply_mlp(model: nn.Module, cfg: PruneMlp, ctx: Context) -> dict[str, Any]:
    """Remove the lowest-importance MLP channels, the same number in every block."""
    model = _unwrap(model)
    arch = _arch(model)
    before = _n_params(model)
    inter = arch.intermediate(model.config)
    keep = inter - round(cfg.amount * inter)
    keep = max(cfg.multiple_of, (keep // cfg.multiple_of) * cfg.multiple_of)
    n_remove = inter - keep
    if not 0 < n_remove < inter:
        raise ConfigError(
            f"removing {cfg.amount:.0%} of {inter} channels (multiple of {cfg.multiple_of}) removes {n_remove}",
            "choose an amount that removes at least one channel and keeps at least one",
        )
    ids = _data(ctx, cfg.importance == "activation")
    if cfg.importance == "activation" and ids is None:
        raise ConfigError(
            "activation MLP importance needs calibration data",
            "pass data, or importance='magnitude'",
        )
    scores = mlp_importance(
        model, ids if cfg.importance == "activation" else None, batch_size=cfg.batch_size
    )
    plan = {
        b: torch.topk(scores[b], n_remove, largest=False).indices.tolist()
        for b in range(len(scores))
    }
    log = remove_mlp_channels(model, plan)
    return _record(model, before, log, arch)


@register_technique(PruneBlocks)
def apply_blocks(model: nn.Module, cfg: PruneBlocks, ctx: Context) -> dict[str, Any]:
    """Remove whole blocks: the least influential ones, or an explicit list."""
    model = _unwrap(model)
    arch = get_arch(model)
    before = _n_params(model)
    depth = arch.n_blocks(model.config)
    if cfg.blocks is not None:
        idx = list(cfg.blocks)
        ranking = None
    else:
        if cfg.remove >= depth:
            raise ConfigError(
                f"cannot remove {cfg.remove} of {depth} blocks", f"remove at most {depth - 1}"
            )
        ids = _data(ctx, True)
        if ids is None:
            raise ConfigError(
                "ranking blocks needs calibration data", "pass data, or list `blocks`"
            )
        if cfg.contiguous:
            ranking = rank_blocks(model, ids, n=cfg.remove, batch_size=cfg.batch_size)
            idx = ranking[0]["blocks"]
        else:
            ranking = rank_blocks(model, ids, n=1, batch_size=cfg.batch_size)
            idx = [r["block"] for r in ranking[: cfg.remove]]
    log = remove_blocks(model, idx)
    rec = _record(model, before, log, arch)
    if ranking is not None:
        rec["ranking"] = ranking
    return rec
