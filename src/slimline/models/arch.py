"""Where each model keeps its blocks, attention, MLP, embeddings, head and norms.

Discovery first, tables second: ``get_arch`` describes any decoder-only HF model from its module
tree, config and a forward check (``slimline.models.discover``, cached per model class); the
hand-written ``FAMILIES`` below remain only where discovery cannot be sure, and override it.
Structured pruning, layer dropping, the calibration engine and the quantizers read roles from
here instead of guessing names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from slimline.errors import UnsupportedArchitectureError
from slimline.models.discover import Layout, discover

_GPT2 = Layout(
    family="gpt2",
    kind="causal-lm",
    blocks=("transformer.h", "h"),
    roles={
        "qkv": "attn.c_attn",
        "o": "attn.c_proj",
        "mlp_in": ("mlp.c_fc",),
        "mlp_out": "mlp.c_proj",
        "attn_norm": "ln_1",
        "mlp_norm": "ln_2",
    },
    embed=("transformer.wte", "wte"),
    pos_embed=("transformer.wpe", "wpe"),
    final_norm=("transformer.ln_f", "ln_f"),
    lm_head="lm_head",
    config_keys={
        "n_blocks": "n_layer",
        "n_heads": "n_head",
        "n_kv_heads": None,
        "hidden": "n_embd",
        "intermediate": "n_inner",
        "head_dim": None,
    },
    conv1d=True,
    mlp_glu=False,
)

_OPT = Layout(
    family="opt",
    kind="causal-lm",
    blocks=("model.decoder.layers", "decoder.layers"),
    roles={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.out_proj",
        "mlp_in": ("fc1",),
        "mlp_out": "fc2",
        "attn_norm": "self_attn_layer_norm",
        "mlp_norm": "final_layer_norm",
    },
    embed=("model.decoder.embed_tokens", "decoder.embed_tokens"),
    pos_embed=("model.decoder.embed_positions", "decoder.embed_positions"),
    final_norm=("model.decoder.final_layer_norm", "decoder.final_layer_norm"),
    lm_head="lm_head",
    config_keys={
        "n_blocks": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "n_kv_heads": None,
        "hidden": "hidden_size",
        "intermediate": "ffn_dim",
        "head_dim": None,
    },
    mlp_glu=False,
)

_BERT = Layout(
    family="bert",
    kind="encoder",
    blocks=("encoder.layer", "bert.encoder.layer"),
    roles={
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "mlp_in": ("intermediate.dense",),
        "mlp_out": "output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "mlp_norm": "output.LayerNorm",
    },
    embed=("embeddings.word_embeddings", "bert.embeddings.word_embeddings"),
    pos_embed=("embeddings.position_embeddings", "bert.embeddings.position_embeddings"),
    final_norm=None,
    lm_head=None,
    config_keys={
        "n_blocks": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "n_kv_heads": None,
        "hidden": "hidden_size",
        "intermediate": "intermediate_size",
        "head_dim": None,
    },
    post_norm=True,
    mlp_glu=False,
)

# Hand-written layouts, only where discovery cannot be sure; they override it. gpt2 stores
# Conv1D weights [in, out] with a fused c_attn; opt has a post-norm variant chosen by a config
# flag (do_layer_norm_before) and optional project_in/out; bert is a post-norm encoder.
FAMILIES: dict[str, Layout] = {"gpt2": _GPT2, "opt": _OPT, "bert": _BERT}

# Names only: model types whose discovered layout is exactly llama's, so code keyed by family
# (the GGUF exporter) treats them alike. Their layout is still discovered, not written here.
FAMILY_NAMES: dict[str, str] = {"llama": "llama", "mistral": "llama", "qwen2": "llama"}


@dataclass(frozen=True)
class Arch:
    """The layout of one loaded model, with every path resolved against that model's root.

    Roles (block-relative names): ``q k v o`` or fused ``qkv`` + ``o``; ``mlp_in`` (a tuple:
    ``(gate, up)``, ``(fc1,)``, or ``(gate_up,)`` when ``mlp_fused``) and ``mlp_out``;
    ``attn_norm``/``mlp_norm`` (the norms that read the residual stream before each branch);
    optional ``attn_post_norm``/``mlp_post_norm`` (Gemma) and ``q_norm``/``k_norm`` (Qwen 3,
    Gemma 3). ``norm_offset`` is 1 where RMSNorm computes ``x * (1 + w)`` (Gemma).
    """

    family: str
    model_type: str
    kind: str
    block_path: str
    roles: dict[str, Any]
    embed: str
    pos_embed: str | None
    final_norm: str | None
    lm_head: str | None
    config_keys: dict[str, str | None]
    conv1d: bool
    post_norm: bool
    norm_offset: float = 0.0
    mlp_glu: bool = True
    mlp_fused: bool = False
    source: str = "table"
    notes: dict[str, Any] = field(default_factory=dict)

    # --- modules -------------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.block_path)  # type: ignore[return-value]

    def block_prefix(self, model: nn.Module | None = None) -> str:
        return self.block_path

    def block_name(self, i: int) -> str:
        return f"{self.block_path}.{i}"

    def linear(self, block: nn.Module, role: str) -> nn.Module | tuple[nn.Module, ...]:
        """The module(s) for ``role`` inside ``block`` (``mlp_in`` gives a tuple)."""
        name = self.roles.get(role)
        if name is None:
            raise KeyError(f"{self.family} has no role {role!r}; roles: {sorted(self.roles)}")
        if isinstance(name, tuple):
            return tuple(block.get_submodule(n) for n in name)
        return block.get_submodule(name)

    def attention_linears(self) -> list[str]:
        """Block-relative names of the attention projections, inputs first."""
        if "qkv" in self.roles:
            return [self.roles["qkv"], self.roles["o"]]
        return [self.roles[r] for r in ("q", "k", "v", "o")]

    def mlp_linears(self) -> list[str]:
        return [*self.roles["mlp_in"], self.roles["mlp_out"]]

    def qkv_rows(self, config: Any) -> tuple[slice, slice, slice]:
        """Row ranges of q, k and v inside a fused ``qkv`` projection."""
        q, kv = (
            self.n_heads(config) * self.head_dim(config),
            self.n_kv_heads(config) * self.head_dim(config),
        )
        return slice(0, q), slice(q, q + kv), slice(q + kv, q + 2 * kv)

    def up_rows(self, config: Any) -> slice:
        """Rows of the "up" half in a fused ``gate_up`` projection (the half read linearly)."""
        inter = self.intermediate(config)
        return slice(inter, 2 * inter)

    def tied(self, model: nn.Module) -> bool:
        if self.lm_head is None:
            return False
        try:
            head = model.get_submodule(self.lm_head)
        except AttributeError:
            return False
        return head.weight is model.get_submodule(self.embed).weight

    # --- config fields -------------------------------------------------------------------
    def _get(self, config: Any, key: str) -> Any:
        name = self.config_keys.get(key)
        return getattr(config, name, None) if name else None

    def n_blocks(self, config: Any) -> int:
        return int(self._get(config, "n_blocks"))

    def hidden(self, config: Any) -> int:
        return int(self._get(config, "hidden"))

    def n_heads(self, config: Any) -> int:
        return int(self._get(config, "n_heads"))

    def n_kv_heads(self, config: Any) -> int:
        kv = self._get(config, "n_kv_heads")
        return int(kv) if kv else self.n_heads(config)

    def head_dim(self, config: Any) -> int:
        hd = self._get(config, "head_dim")
        return int(hd) if hd else self.hidden(config) // self.n_heads(config)

    def intermediate(self, config: Any) -> int:
        inter = self._get(config, "intermediate")
        return int(inter) if inter else 4 * self.hidden(config)

    def sliding_window(self, config: Any, block: int) -> int | None:
        """The attention window of ``block`` (Gemma's sliding layers, Mistral), None if full."""
        window = getattr(config, "sliding_window", None)
        types = getattr(config, "layer_types", None)
        if not window:
            return None
        if types is not None:
            return int(window) if types[block] == "sliding_attention" else None
        return int(window) if getattr(config, "use_sliding_window", True) else None


def supported_families() -> list[str]:
    """Families with a hand-written layout or a tiny test config; any other decoder-only model
    is described by discovery when it fits the pattern."""
    from slimline.models.tiny import TINY_FAMILIES

    return sorted(set(FAMILIES) | set(TINY_FAMILIES))


def _first_existing(model: nn.Module, paths: tuple[str, ...] | None) -> str | None:
    for p in paths or ():
        try:
            model.get_submodule(p)
            return p
        except AttributeError:
            continue
    return None


def get_layout(model: nn.Module) -> Layout:
    """The table entry for ``model``'s type if there is one, else its discovered layout."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None) or ""
    fam = FAMILIES.get(model_type)
    if fam is not None:
        return fam
    if config is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} has no HF config, so its layout cannot be described "
            f"(hand-written families: {', '.join(sorted(FAMILIES))})",
            "load a transformers model, or describe it with a Layout entry in "
            "slimline/models/arch.py",
        )
    try:
        return discover(model)
    except UnsupportedArchitectureError as e:
        raise UnsupportedArchitectureError(
            f"{e.problem} (families known to work: {', '.join(supported_families())})", e.fix
        ) from None


def get_arch(model: nn.Module) -> Arch:
    """The layout of ``model``; an undescribable model raises a clear error with the reason."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None) or type(model).__name__
    fam = get_layout(model)
    block_path = _first_existing(model, fam.blocks)
    embed = _first_existing(model, fam.embed)
    if block_path is None or embed is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} is a {model_type} model but its blocks were not found at "
            f"{' or '.join(fam.blocks)}",
            "load it with the standard transformers class for its model type",
        )
    lm_head = fam.lm_head if fam.lm_head and _first_existing(model, (fam.lm_head,)) else None
    family = FAMILY_NAMES.get(model_type, fam.family) if fam.source == "discovered" else fam.family
    return Arch(
        family=family,
        model_type=model_type,
        kind=fam.kind,
        block_path=block_path,
        roles=dict(fam.roles),
        embed=embed,
        pos_embed=_first_existing(model, fam.pos_embed),
        final_norm=_first_existing(model, fam.final_norm),
        lm_head=lm_head,
        config_keys=dict(fam.config_keys),
        conv1d=fam.conv1d,
        post_norm=fam.post_norm,
        norm_offset=fam.norm_offset,
        mlp_glu=fam.mlp_glu,
        mlp_fused=fam.mlp_fused,
        source=fam.source,
        notes=dict(fam.notes),
    )
