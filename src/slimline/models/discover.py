"""Describe a decoder-only transformer from what it is: its module tree, its config, a forward.

A hand-written table per family does not scale (Gemma, Qwen 3, Phi-3, SmolLM3, Granite, ...), and
every family shares one shape: a ``ModuleList`` of identical blocks, each a pre-norm residual
attention followed by a pre-norm residual MLP. This module finds that shape and proves it:

1. **Config**: block count, heads, kv-heads, head_dim, hidden and intermediate sizes, by the
   field names HF configs use.
2. **Block list**: the ``ModuleList`` holding ``n_blocks`` modules of one class.
3. **Roles**, from one traced forward of block 0 (execution order + shapes): the attention
   inputs (q/k/v, or a fused qkv of ``(H + 2K) * head_dim`` rows), the first linear writing
   ``hidden`` (o), then the MLP inputs (gate/up, a fused gate_up of ``2 * intermediate`` rows,
   or a single fc1) and its output; norms by where they run (pre-norm before each branch,
   Gemma's post-norms after it, Qwen 3 / Gemma 3 q/k norms on ``head_dim`` inside attention).
4. **Forward checks** (output hooks, no weight is touched): each pre-norm feeds its branch;
   silencing the attention branch leaves the MLP's residual input equal to the block input;
   silencing the MLP branch leaves the block output equal to that residual; zeroing v zeroes
   o's input; doubling "up" doubles down's input (so gate and up are not swapped); a norm with
   weight 0 (or -1) outputs zeros, which tells ``x * w`` from Gemma's ``x * (1 + w)``.

Anything that does not fit raises ``UnsupportedArchitectureError`` with the reason. Results are
cached per model class: the layout is a property of the code, not of one instance's weights.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimline.errors import UnsupportedArchitectureError

# HF config field names, most common first.
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "n_blocks": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "n_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "n_kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num"),
    "hidden": ("hidden_size", "n_embd", "d_model", "dim"),
    "intermediate": ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "d_ff"),
    "head_dim": ("head_dim", "kv_channels"),
}

_Q = {"q_proj", "q", "query", "wq", "q_lin"}
_K = {"k_proj", "k", "key", "wk", "k_lin"}
_V = {"v_proj", "v", "value", "wv", "v_lin"}
_GATE = {"gate_proj", "w1", "gate", "fc_gate"}
_UP = {"up_proj", "w3", "up", "fc1", "fc_in", "c_fc", "dense_h_to_4h"}

_TOL = {"atol": 1e-4, "rtol": 1e-4}


@dataclass(frozen=True)
class Layout:
    """Where one family keeps its parts: dotted paths (candidates from the root, or relative to
    a block for roles) and config field names. Written by hand (``arch.FAMILIES``) or found by
    ``discover``."""

    family: str
    kind: str  # "causal-lm" | "encoder"
    blocks: tuple[str, ...]
    roles: dict[str, Any]  # role -> name relative to a block; mlp_in is a tuple
    embed: tuple[str, ...]
    pos_embed: tuple[str, ...] | None
    final_norm: tuple[str, ...] | None
    lm_head: str | None
    config_keys: dict[str, str | None]
    conv1d: bool = False
    post_norm: bool = False
    norm_offset: float = 0.0  # RMSNorm computes x * (offset + weight): Gemma uses 1
    mlp_glu: bool = True  # mlp_out reads act(gate) * up (else act(fc1))
    mlp_fused: bool = False  # one linear holds [gate; up] rows (Phi-3's gate_up_proj)
    source: str = "table"  # "table" | "discovered"
    notes: dict[str, Any] = field(default_factory=dict)


_CACHE: dict[tuple[Any, ...], Layout | UnsupportedArchitectureError] = {}


def _cache_key(model: nn.Module) -> tuple[Any, ...]:
    """Model class, config class, and the config's switches (bool/str fields): the code and
    the flags that choose its branches (e.g. OPT's do_layer_norm_before), never sizes."""
    config = getattr(model, "config", None)
    items = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config or object()))
    flags = tuple(
        sorted(
            (k, v)
            for k, v in items.items()
            if isinstance(v, bool | str) and not k.startswith("_") and k != "transformers_version"
        )
    )
    return (type(model), type(config), flags)


def _refuse(model: nn.Module, reason: str) -> UnsupportedArchitectureError:
    mt = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    return UnsupportedArchitectureError(
        f"cannot describe {type(model).__name__} ({mt!r}) as a decoder-only transformer: {reason}",
        "load it with its standard transformers class, or add a hand-written Layout for its "
        "model type to FAMILIES in slimline/models/arch.py (tables override discovery)",
    )


def _config_key(config: Any, role: str) -> str | None:
    for name in CONFIG_KEYS[role]:
        if isinstance(getattr(config, name, None), int) and not isinstance(
            getattr(config, name), bool
        ):
            return name
    return None


def _is_linear(m: nn.Module) -> bool:
    return isinstance(getattr(m, "in_features", None), int) and isinstance(
        getattr(m, "out_features", None), int
    )


def _is_norm(m: nn.Module) -> bool:
    w = getattr(m, "weight", None)
    name = type(m).__name__.lower()
    return (
        isinstance(w, torch.Tensor)
        and w.ndim == 1
        and not list(m.children())
        and ("norm" in name or isinstance(m, nn.LayerNorm | nn.RMSNorm))
    )


def _leaf_linears(block: nn.Module) -> dict[str, nn.Module]:
    """Linear-like modules (nn.Linear and compressed stand-ins), outermost only."""
    out: dict[str, nn.Module] = {}
    for name, m in block.named_modules():
        if name and _is_linear(m) and not any(name.startswith(p + ".") for p in out):
            out[name] = m
    return out


def _find_blocks(model: nn.Module, n_blocks: int) -> str | None:
    best: tuple[int, int, str] | None = None
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) != n_blocks or n_blocks == 0:
            continue
        if len({type(b) for b in m}) != 1:
            continue
        n = sum(p.numel() for p in m.parameters())
        cand = (n, -len(name), name)
        if best is None or cand > best:
            best = cand
    return best[2] if best else None


def _name_of(model: nn.Module, mod: nn.Module | None) -> str | None:
    if mod is None:
        return None
    for name, m in model.named_modules():
        if m is mod:
            return name
    return None


class _Stop(Exception):
    pass


@torch.no_grad()
def _block_call(model: nn.Module, block: nn.Module, vocab: int) -> tuple[torch.Tensor, dict]:
    """The hidden states and kwargs block 0 receives in a short real forward."""
    got: dict[str, Any] = {}

    def grab(_m: nn.Module, args: tuple, kw: dict[str, Any]) -> None:
        kw = dict(kw)
        got["x"] = args[0] if args else kw.pop("hidden_states")
        for k in ("past_key_values", "past_key_value", "cache"):
            kw.pop(k, None)
        kw["use_cache"] = False
        got["kw"] = kw
        raise _Stop

    device = next(model.parameters()).device
    ids = torch.randint(
        0, max(2, min(vocab, 1000)), (1, 8), generator=torch.Generator().manual_seed(0)
    )
    h = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with contextlib.suppress(_Stop):
            model(input_ids=ids.to(device), use_cache=False)
    finally:
        h.remove()
    if "x" not in got:
        raise RuntimeError("block 0 was never called")
    return got["x"], got["kw"]


@contextlib.contextmanager
def _override(mod: nn.Module, fn: Any) -> Iterator[None]:
    """Replace ``mod``'s output by ``fn(output)`` meanwhile."""

    def hook(_m: nn.Module, _a: tuple, out: Any) -> Any:
        if isinstance(out, tuple):
            return (fn(out[0]), *out[1:])
        return fn(out)

    h = mod.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple | list) else out


class _Trace:
    """One forward of a block, recording each watched module's input/output in call order."""

    def __init__(self, block: nn.Module, watched: dict[str, nn.Module]):
        self.block, self.watched = block, watched
        self.calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def run(self, x: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
        self.calls = []
        handles = []
        for name, m in self.watched.items():

            def hook(_m: nn.Module, args: tuple, out: Any, _n: str = name) -> None:
                if args:
                    self.calls.append((_n, args[0].detach(), _first(out).detach()))

            handles.append(m.register_forward_hook(hook))
        try:
            return _first(self.block(x, **kw)).detach()
        finally:
            for h in handles:
                h.remove()

    def io(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        for n, i, o in self.calls:
            if n == name:
                return i, o
        raise KeyError(name)

    def order(self) -> list[str]:
        seen: list[str] = []
        for n, _, _ in self.calls:
            if n not in seen:
                seen.append(n)
        return seen


@torch.no_grad()
def _norm_offset(norm: nn.Module, width: int) -> float | None:
    """0 for ``x̂ * w``, 1 for Gemma's ``x̂ * (1 + w)``; None for neither."""
    probe = copy.deepcopy(norm).float()
    x = torch.randn(2, 3, width, generator=torch.Generator().manual_seed(1))
    for offset in (0.0, 1.0):
        probe.weight.fill_(-offset)
        if getattr(probe, "bias", None) is not None:
            probe.bias.zero_()
        if _first(probe(x)).abs().max() < 1e-6:
            return offset
    return None


def _short(name: str) -> str:
    return name.rpartition(".")[2]


def discover(model: nn.Module) -> Layout:
    """The layout of a decoder-only HF model, found and verified; cached per model class (and
    config switches)."""
    key = _cache_key(model)
    hit = _CACHE.get(key)
    if isinstance(hit, Layout):
        return hit
    if hit is not None:
        raise hit
    try:
        layout = _discover(model)
    except UnsupportedArchitectureError as e:
        _CACHE[key] = e
        raise
    _CACHE[key] = layout
    return layout


def _discover(model: nn.Module) -> Layout:
    config = getattr(model, "config", None)
    if config is None:
        raise _refuse(model, "it has no HF config")
    if getattr(config, "is_encoder_decoder", False):
        raise _refuse(model, "it is an encoder-decoder model")
    keys: dict[str, str | None] = {r: _config_key(config, r) for r in CONFIG_KEYS}
    for need in ("n_blocks", "n_heads", "hidden"):
        if keys[need] is None:
            raise _refuse(model, f"its config has none of {', '.join(CONFIG_KEYS[need])}")
    n_blocks = int(getattr(config, keys["n_blocks"]))  # type: ignore[arg-type]
    H = int(getattr(config, keys["n_heads"]))  # type: ignore[arg-type]
    hidden = int(getattr(config, keys["hidden"]))  # type: ignore[arg-type]
    K = int(getattr(config, keys["n_kv_heads"])) if keys["n_kv_heads"] else H
    hd = int(getattr(config, keys["head_dim"])) if keys["head_dim"] else hidden // H

    block_path = _find_blocks(model, n_blocks)
    if block_path is None:
        raise _refuse(model, f"no ModuleList of {n_blocks} blocks of one class")
    blocks = model.get_submodule(block_path)
    block = blocks[0]
    lins = _leaf_linears(block)
    if any(type(m).__name__ == "Conv1D" for m in lins.values()):
        raise _refuse(model, "its blocks use Conv1D (weights stored [in, out])")
    norms = {n: m for n, m in block.named_modules() if n and _is_norm(m)}

    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    embed = _name_of(model, emb)
    if embed is None:
        raise _refuse(model, "get_input_embeddings() gives no module")
    try:
        x, kw = _block_call(model, block, int(emb.num_embeddings))
    except Exception as e:  # any model code may fail on a probe input
        raise _refuse(
            model, f"a probe forward up to block 0 failed ({type(e).__name__}: {e})"
        ) from e

    was_training = model.training
    model.eval()
    try:
        roles, flags, notes = _roles(model, block, lins, norms, x, kw, H, K, hd, hidden, keys)
    finally:
        model.train(was_training)

    inter = lins[roles["mlp_out"]].in_features
    if keys["intermediate"] is None:
        raise _refuse(model, f"its config has none of {', '.join(CONFIG_KEYS['intermediate'])}")
    if int(getattr(config, keys["intermediate"])) != inter:
        raise _refuse(
            model,
            f"config {keys['intermediate']}={getattr(config, keys['intermediate'])} but the MLP "
            f"output reads {inter} channels",
        )

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    lm_head = _name_of(model, head)
    final_norm = None
    for name, m in model.named_modules():
        if _is_norm(m) and not name.startswith(block_path + ".") and m.weight.shape[0] == hidden:
            final_norm = name  # the last one outside the blocks
    pos_embed = None
    for name, m in model.named_modules():
        outside = not name.startswith(block_path + ".")
        positional = "pos" in name.lower() or name.endswith("wpe")
        if isinstance(m, nn.Embedding) and m is not emb and outside and positional:
            pos_embed = name
            break
    notes.update(_family_notes(model, config, emb))
    mt = getattr(config, "model_type", None) or type(model).__name__
    return Layout(
        family=mt,
        kind="causal-lm",
        blocks=(block_path,),
        roles=roles,
        embed=(embed,),
        pos_embed=(pos_embed,) if pos_embed else None,
        final_norm=(final_norm,) if final_norm else None,
        lm_head=lm_head,
        config_keys=keys,
        norm_offset=flags["norm_offset"],
        mlp_glu=flags["mlp_glu"],
        mlp_fused=flags["mlp_fused"],
        source="discovered",
        notes=notes,
    )


def _roles(
    model: nn.Module,
    block: nn.Module,
    lins: dict[str, nn.Module],
    norms: dict[str, nn.Module],
    x: torch.Tensor,
    kw: dict[str, Any],
    H: int,
    K: int,
    hd: int,
    hidden: int,
    keys: dict[str, str | None],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    def no(reason: str) -> UnsupportedArchitectureError:
        return _refuse(model, reason)

    trace = _Trace(block, {**lins, **norms})
    trace.run(x, kw)
    order = trace.order()
    lin_order = [n for n in order if n in lins]
    if not lin_order:
        raise no("its blocks contain no linear layers")
    # consecutive linears reading the same tensor form one group: [q k v] [o] [gate up] [down]
    groups: list[list[str]] = []
    for n in lin_order:
        x_in = trace.io(n)[0]
        prev = trace.io(groups[-1][0])[0] if groups else None
        if prev is not None and prev.shape == x_in.shape and torch.equal(prev, x_in):
            groups[-1].append(n)
        else:
            groups.append([n])
    if len(groups) != 4 or len(groups[1]) != 1 or len(groups[3]) != 1:
        raise no(
            f"its linears do not run as attention inputs, output, MLP inputs, output: {groups}"
        )
    attn_in, (o,), mlp_in, (mlp_out,) = groups
    for n in (o, mlp_out):
        if lins[n].out_features != hidden:
            raise no(f"{n} writes {lins[n].out_features} features, not the hidden size {hidden}")
    roles: dict[str, Any] = {"o": o, "mlp_out": mlp_out}
    q_rows, kv_rows = H * hd, K * hd
    if lins[o].in_features != q_rows:
        raise no(f"{o} reads {lins[o].in_features} features, {H} heads x {hd} = {q_rows}")
    if len(attn_in) == 1:
        if lins[attn_in[0]].out_features != q_rows + 2 * kv_rows:
            raise no(
                f"fused {attn_in[0]} has {lins[attn_in[0]].out_features} rows, not "
                f"({H} + 2 x {K}) x {hd}"
            )
        roles["qkv"] = attn_in[0]
    elif len(attn_in) == 3:
        by_name = {}
        for n in attn_in:
            s = _short(n)
            for role, names in (("q", _Q), ("k", _K), ("v", _V)):
                if s in names:
                    by_name[role] = n
        q, k, v = (by_name[r] for r in "qkv") if len(by_name) == 3 else attn_in
        shapes = (lins[q].out_features, lins[k].out_features, lins[v].out_features)
        if shapes != (q_rows, kv_rows, kv_rows):
            raise no(f"q/k/v have {shapes} rows, expected ({q_rows}, {kv_rows}, {kv_rows})")
        roles.update(q=q, k=k, v=v)
    else:
        raise no(f"attention has {len(attn_in)} input projections ({attn_in}); expected 3 or 1")

    inter = lins[mlp_out].in_features
    mlp_glu, mlp_fused = True, False
    if len(mlp_in) == 1:
        rows = lins[mlp_in[0]].out_features
        if rows == 2 * inter:
            mlp_fused = True
        elif rows != inter:
            raise no(f"{mlp_in[0]} has {rows} rows; the MLP output reads {inter}")
        else:
            mlp_glu = False
        roles["mlp_in"] = (mlp_in[0],)
    elif len(mlp_in) == 2:
        if {lins[n].out_features for n in mlp_in} != {inter}:
            raise no(f"gate/up {mlp_in} do not both have {inter} rows")
        roles["mlp_in"] = tuple(mlp_in)  # ordered below by the forward check
    else:
        raise no(f"the MLP has {len(mlp_in)} input projections ({mlp_in}); expected 1 or 2")

    # norms by where they run
    first_attn = order.index(attn_in[0])
    first_mlp = order.index(mlp_in[0])
    wide = [n for n in order if n in norms and norms[n].weight.shape[0] == hidden]
    before_attn = [n for n in wide if order.index(n) < first_attn]
    between = [n for n in wide if order.index(o) < order.index(n) < first_mlp]
    after = [n for n in wide if order.index(n) > order.index(mlp_out)]
    if not before_attn or not between:
        raise no(
            "no norm runs before the attention and before the MLP (post-norm or parallel "
            "blocks need a hand-written Layout)"
        )
    roles["attn_norm"] = before_attn[-1]
    roles["mlp_norm"] = between[-1]
    if len(between) > 1:
        roles["attn_post_norm"] = between[0]
    if after:
        roles["mlp_post_norm"] = after[0]
    head_norms = [
        n
        for n in order
        if n in norms
        and norms[n].weight.shape[0] == hd
        and first_attn < order.index(n) < order.index(o)
    ]
    for n in head_norms:
        s = _short(n).lower()
        role = "q_norm" if s.startswith("q") else "k_norm" if s.startswith("k") else None
        if role is None:
            raise no(f"{n} normalises head vectors but is neither a q nor a k norm")
        roles[role] = n

    _verify(model, block, trace, roles, x, kw, mlp_fused, inter, q_rows, kv_rows)
    offsets = {_norm_offset(norms[roles[r]], hidden) for r in ("attn_norm", "mlp_norm")}
    if len(offsets) != 1 or None in offsets:
        raise no("its norms are neither x*w nor x*(1+w) RMS/LayerNorms")
    flags = {"norm_offset": offsets.pop(), "mlp_glu": mlp_glu, "mlp_fused": mlp_fused}
    notes: dict[str, Any] = {}
    if any(getattr(lins[n], "bias", None) is not None for n in lins):
        notes["bias"] = sorted(
            _short(n) for n in lins if getattr(lins[n], "bias", None) is not None
        )
    return roles, flags, notes


@torch.no_grad()
def _verify(
    model: nn.Module,
    block: nn.Module,
    trace: _Trace,
    roles: dict[str, Any],
    x: torch.Tensor,
    kw: dict[str, Any],
    mlp_fused: bool,
    inter: int,
    q_rows: int,
    kv_rows: int,
) -> None:
    """Prove the roles with output overrides; reorders a (gate, up) pair when needed."""

    def no(reason: str) -> UnsupportedArchitectureError:
        return _refuse(model, f"forward check failed: {reason}")

    # each pre-norm feeds its branch
    attn_inputs = [roles["qkv"]] if "qkv" in roles else [roles[r] for r in "qkv"]
    for norm, readers in (("attn_norm", attn_inputs), ("mlp_norm", list(roles["mlp_in"]))):
        _, n_out = trace.io(roles[norm])
        for r in readers:
            if not torch.allclose(trace.io(r)[0], n_out, **_TOL):
                raise no(f"{r} does not read the output of {roles[norm]}")
    mods = block
    zero = torch.zeros_like
    # silence attention: the MLP's residual input must be the block input
    attn_last = mods.get_submodule(roles.get("attn_post_norm", roles["o"]))
    with _override(attn_last, zero):
        trace.run(x, kw)
    if not torch.allclose(trace.io(roles["mlp_norm"])[0], x, **_TOL):
        raise no("with the attention branch silenced the MLP norm does not read the block input")
    # silence the MLP: the block output must be the MLP's residual input
    mlp_last = mods.get_submodule(roles.get("mlp_post_norm", roles["mlp_out"]))
    with _override(mlp_last, zero):
        out = trace.run(x, kw)
    if not torch.allclose(out, trace.io(roles["mlp_norm"])[0], **_TOL):
        raise no("with the MLP silenced the block output is not its residual input")
    # v feeds o: zeroing v (or the v rows of a fused qkv) zeroes o's input
    if "qkv" in roles:

        def zero_v(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            t[..., q_rows + kv_rows :] = 0
            return t

        v_mod, fn = mods.get_submodule(roles["qkv"]), zero_v
    else:
        v_mod, fn = mods.get_submodule(roles["v"]), zero
    with _override(v_mod, fn):
        trace.run(x, kw)
    if trace.io(roles["o"])[0].abs().max() > 1e-6:
        raise no(f"zeroing the value projection does not zero the input of {roles['o']}")
    # gate vs up: doubling up doubles what the MLP output reads
    trace.run(x, kw)
    base = trace.io(roles["mlp_out"])[0]
    if mlp_fused:

        def double_up(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            t[..., inter:] *= 2
            return t

        with _override(mods.get_submodule(roles["mlp_in"][0]), double_up):
            trace.run(x, kw)
        if not torch.allclose(trace.io(roles["mlp_out"])[0], 2 * base, **_TOL):
            raise no(f"{roles['mlp_in'][0]} does not hold [gate; up] rows in that order")
    elif len(roles["mlp_in"]) == 2:
        linear_in = []
        for n in roles["mlp_in"]:
            with _override(mods.get_submodule(n), lambda t: 2 * t):
                trace.run(x, kw)
            linear_in.append(torch.allclose(trace.io(roles["mlp_out"])[0], 2 * base, **_TOL))
        if linear_in.count(True) != 1:
            raise no(f"cannot tell gate from up in {roles['mlp_in']}")
        a, b = roles["mlp_in"]
        roles["mlp_in"] = (a, b) if linear_in[1] else (b, a)  # (gate, up)


def _family_notes(model: nn.Module, config: Any, emb: nn.Module) -> dict[str, Any]:
    """Family specifics other code must respect: scaled embeddings, soft-capping, windows."""
    notes: dict[str, Any] = {}
    with torch.no_grad():
        ids = torch.arange(min(4, emb.num_embeddings)).unsqueeze(0)
        ids = ids.to(emb.weight.device)
        ratio = None
        out, ref = emb(ids).float(), emb.weight[ids].float()
        nz = ref.abs() > 1e-8
        if nz.any():
            ratio = (out[nz] / ref[nz]).median().item()
    if ratio is not None and not math.isclose(ratio, 1.0, rel_tol=1e-4):
        notes["embed_scale"] = round(float(ratio), 6)
    for k in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(config, k, None):
            notes[k] = float(getattr(config, k))
    types = getattr(config, "layer_types", None)
    if types and "sliding_attention" in types and getattr(config, "sliding_window", None):
        notes["sliding_window"] = int(config.sliding_window)
        notes["sliding_layers"] = sum(t == "sliding_attention" for t in types)
    return notes
