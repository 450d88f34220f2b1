"""Which capability each model family supports, asked of the code paths themselves.

Nothing here is a hand-kept matrix: for every family with a tiny config (and any model you pass)
the arch map is built (table or discovery) and each capability's own guard is called — the same
function the technique calls before it edits anything. A guard that raises gives "no" and its
reason; a guard that passes gives "yes", with how it is done where that differs by family
(e.g. AWQ folding into the norms vs keeping an input scale; fused projections split).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimline.errors import SlimlineError
from slimline.models.arch import Arch, get_arch


@dataclass
class FamilyReport:
    """One family's arch summary and, per capability, (supported, detail)."""

    family: str
    model_type: str
    source: str  # "table" | "discovered"
    specifics: list[str]
    capabilities: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "model_type": self.model_type,
            "source": self.source,
            "specifics": self.specifics,
            "capabilities": {
                k: {"supported": ok, "detail": d} for k, (ok, d) in self.capabilities.items()
            },
        }


def _specifics(arch: Arch) -> list[str]:
    out = []
    if "qkv" in arch.roles:
        out.append("fused qkv")
    if arch.mlp_fused:
        out.append("fused gate_up")
    if "q_norm" in arch.roles:
        out.append("q/k norms")
    if "attn_post_norm" in arch.roles or "mlp_post_norm" in arch.roles:
        out.append("post-branch norms")
    if arch.norm_offset:
        out.append(f"({arch.norm_offset:g}+w) RMSNorm")
    if arch.post_norm:
        out.append("post-norm")
    if arch.conv1d:
        out.append("Conv1D")
    for k, label in (
        ("embed_scale", "scaled embeddings"),
        ("attn_logit_softcapping", "attn soft-cap"),
        ("final_logit_softcapping", "logit soft-cap"),
        ("sliding_window", "sliding window"),
    ):
        if k in arch.notes:
            out.append(label)
    if arch.notes.get("bias"):
        out.append("bias " + "/".join(arch.notes["bias"]))
    return out


# --- each capability's guard: returns a detail string, or raises with the reason ---------------


def _awq(arch: Arch, model: nn.Module) -> str:
    from slimline.quant.awq import _groups

    block = arch.blocks(model)[0]
    lins = {f"b.{n}": m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    folded = sum(t is not None for t, _ in _groups(block, model, lins, "b"))
    return "folds into norms" if folded else "input scale"


def _smoothquant(arch: Arch, model: nn.Module) -> str:
    from slimline.quant.smoothquant import block_pairs

    block_pairs(arch)
    return "(1+w) fold" if arch.norm_offset else ""


def _heads(arch: Arch, model: nn.Module) -> str:
    from slimline.prune.structured import check_head_pruning

    check_head_pruning(arch)
    return "splits fused qkv" if "qkv" in arch.roles else ""


def _mlp(arch: Arch, model: nn.Module) -> str:
    from slimline.prune.structured import check_width_pruning

    check_width_pruning(arch)
    return "splits gate_up" if arch.mlp_fused else ""


def _blocks(arch: Arch, model: nn.Module) -> str:
    arch.blocks(model)
    return "layer_types follow" if getattr(model.config, "layer_types", None) else ""


def _distill(arch: Arch, model: nn.Module) -> str:
    return "" if arch.kind == "causal-lm" else "embedding losses"


def _gguf(arch: Arch, model: nn.Module) -> str:
    from slimline.export.gguf_export import gguf_arch_for

    # the exporter's own family condition (slimline.export.gguf_export._write calls it too)
    return f"llama.cpp arch {gguf_arch_for(arch)}"


def _calib(arch: Arch, model: nn.Module) -> str:
    arch.blocks(model)
    return ""


CAPABILITIES: dict[str, Callable[[Arch, nn.Module], str]] = {
    "profile": _calib,
    "rtn/gptq": _calib,
    "awq": _awq,
    "smoothquant": _smoothquant,
    "wanda/sparsegpt": _calib,
    "prune.heads": _heads,
    "prune.mlp": _mlp,
    "prune.blocks": _blocks,
    "student (drop)": _blocks,
    "distill": _distill,
    "gguf": _gguf,
}


def report(model: nn.Module) -> FamilyReport:
    """Ask every capability's guard about ``model`` (a refusal of the arch map itself raises)."""
    arch = get_arch(model)
    rep = FamilyReport(arch.family, arch.model_type, arch.source, _specifics(arch))
    for name, guard in CAPABILITIES.items():
        try:
            rep.capabilities[name] = (True, guard(arch, model))
        except SlimlineError as e:
            rep.capabilities[name] = (False, e.problem)
    return rep


def family_table() -> list[FamilyReport]:
    """One report per family with a tiny config (built at toy size, no tokenizer needed)."""
    from transformers import AutoModel, AutoModelForCausalLM

    from slimline.models.tiny import TINY_FAMILIES, tiny_config

    out = []
    torch.manual_seed(0)
    for fam in TINY_FAMILIES:
        cfg = tiny_config(fam, vocab_size=256, n_blocks=2, hidden=32, n_heads=4, n_kv_heads=2)
        cls = AutoModel if fam == "bert" else AutoModelForCausalLM
        model = cls.from_config(cfg, dtype=torch.float32).eval()
        out.append(report(model))
    return out
