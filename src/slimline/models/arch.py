"""Where each model family keeps its blocks, attention, MLP, embeddings, head and norms.

Described once per family so structured pruning, layer dropping and the calibration engine read
names instead of guessing them. To support a new family, add a ``_Family`` entry below: the
dotted path of the block list and of each role inside a block, and the config field names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from slimline.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class _Family:
    family: str
    kind: str  # "causal-lm" | "encoder"
    blocks: tuple[str, ...]  # candidate paths of the block list, from the model root
    roles: dict[str, Any]  # role -> name relative to a block; mlp_in is a tuple
    embed: tuple[str, ...]
    pos_embed: tuple[str, ...] | None
    final_norm: tuple[str, ...] | None
    lm_head: str | None
    config_keys: dict[str, str | None]
    conv1d: bool = False
    post_norm: bool = False


_LLAMA = _Family(
    family="llama",
    kind="causal-lm",
    blocks=("model.layers", "layers"),
    roles={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "mlp_in": ("mlp.gate_proj", "mlp.up_proj"),
        "mlp_out": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "mlp_norm": "post_attention_layernorm",
    },
    embed=("model.embed_tokens", "embed_tokens"),
    pos_embed=None,
    final_norm=("model.norm", "norm"),
    lm_head="lm_head",
    config_keys={
        "n_blocks": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads",
        "hidden": "hidden_size",
        "intermediate": "intermediate_size",
        "head_dim": "head_dim",
    },
)

_GPT2 = _Family(
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
)

_OPT = _Family(
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
)

_BERT = _Family(
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
)

# HF model_type -> family layout. llama, mistral and qwen2 share one layout.
FAMILIES: dict[str, _Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "gpt2": _GPT2,
    "opt": _OPT,
    "bert": _BERT,
}


@dataclass(frozen=True)
class Arch:
    """The layout of one loaded model, with every path resolved against that model's root."""

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


def supported_families() -> list[str]:
    return sorted(FAMILIES)


def _first_existing(model: nn.Module, paths: tuple[str, ...] | None) -> str | None:
    for p in paths or ():
        try:
            model.get_submodule(p)
            return p
        except AttributeError:
            continue
    return None


def get_arch(model: nn.Module) -> Arch:
    """The layout of ``model``; an unknown family raises a clear error naming the supported ones."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    fam = FAMILIES.get(model_type or "")
    if fam is None:
        raise UnsupportedArchitectureError(
            f"model type {model_type or type(model).__name__!r} is not described in slimline's "
            f"architecture map (supported: {', '.join(supported_families())})",
            "use a supported family, or describe the new one with a _Family entry in "
            "slimline/models/arch.py (block list path, q/k/v/o, mlp_in/mlp_out, norms, config keys)",
        )
    block_path = _first_existing(model, fam.blocks)
    embed = _first_existing(model, fam.embed)
    if block_path is None or embed is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__} is a {model_type} model but its blocks were not found at "
            f"{' or '.join(fam.blocks)}",
            "load it with the standard transformers class for its model type",
        )
    lm_head = fam.lm_head if fam.lm_head and _first_existing(model, (fam.lm_head,)) else None
    return Arch(
        family=fam.family,
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
    )
