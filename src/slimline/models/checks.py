"""Checks every model load goes through: the weights that were read are the weights the model
uses (no tensor missing or left over), every weight is a finite number, and no model code runs.

transformers fills a tensor missing from the checkpoint with random values and only says so in a
load report that ``TRANSFORMERS_VERBOSITY=error`` hides; a NaN weight turns every metric into NaN.
Both give a model that looks fine and is garbage, so both are errors that name the tensors.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimline.errors import ModelLoadError, NonFiniteError

# Set on purpose to let a model's own Python code (config.json "auto_map") run.
TRUST_REMOTE_CODE_ENV = "SLIMLINE_TRUST_REMOTE_CODE"
# Task heads a checkpoint may carry beside the base model an encoder is loaded as (BERT's MLM and
# NSP heads, classifiers): left over on purpose when loading ``AutoModel``, never used.
_HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "lm_head.", "score.")


def _names(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_load_report(where: str, info: dict[str, Any], model: nn.Module) -> None:
    """Refuse a ``from_pretrained(..., output_loading_info=True)`` load that left a tensor at its
    random initial value (missing) or read tensors the model has no place for (unexpected).

    transformers already leaves out what is legitimately absent: tied weights (``lm_head``
    sharing the embedding), non-persistent buffers and the keys a class declares ignorable."""
    missing = set(info.get("missing_keys") or ())
    unexpected = set(info.get("unexpected_keys") or ())
    mismatched = [
        str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ()
    ]
    if getattr(model, "base_model", None) is model:  # a bare encoder: task heads may be left over
        unexpected = {k for k in unexpected if not k.startswith(_HEAD_PREFIXES)}
    parts = []
    if missing:
        parts.append(f"missing {_names(missing)} (they would be random)")
    if unexpected:
        parts.append(f"unexpected {_names(unexpected)}")
    if mismatched:
        parts.append(f"wrong shape {_names(mismatched)}")
    if parts:
        raise ModelLoadError(
            f"{where}: the weights do not match the model its config.json builds: "
            + "; ".join(parts),
            "the weight files are incomplete or belong to another model: restore the complete "
            "directory (config.json and weights of the same model)",
        )


def count_nonfinite(t: torch.Tensor) -> int:
    """NaN/Inf elements of a float tensor. A sum is finite when every element is (NaN and Inf
    propagate), and costs one read without a mask: the exact count runs only when it is not
    (a sum can also overflow on large finite values, which the exact count then clears)."""
    t = t.detach()
    if bool(torch.isfinite(t.sum())):
        return 0
    return int((~torch.isfinite(t)).sum())


def check_finite(model: nn.Module, where: str) -> None:
    """Refuse a model holding NaN or Inf in any floating-point parameter or buffer, by name."""
    seen: set[int] = set()
    for name, t in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        if id(t) in seen or not t.is_floating_point() or t.device.type == "meta":
            continue
        seen.add(id(t))
        n = count_nonfinite(t)
        if n:
            raise NonFiniteError(
                f"{where}: tensor {name} holds {n:,} non-finite value(s) (NaN/Inf) out of {t.numel():,}",
                "the weights are corrupt or diverged: restore them from their source; "
                "slimline does not compress or measure a model with NaN/Inf weights",
            )


@torch.inference_mode()
def first_nonfinite_output(model: nn.Module, ids: torch.Tensor) -> str | None:
    """Name of the first module (in execution order) whose output holds NaN/Inf on ``ids``."""
    found: list[str] = []
    hooks = []

    def hook(name: str) -> Any:
        def fn(_mod: nn.Module, _inp: Any, out: Any) -> None:
            t = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)
            floats = isinstance(t, torch.Tensor) and t.is_floating_point()
            if not found and floats and not bool(torch.isfinite(t).all()):
                found.append(name)

        return fn

    for name, mod in model.named_modules():
        if name and not list(mod.children()):  # leaves: the tensor op that went wrong
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return found[0] if found else None


def remote_code_allowed(trust_remote_code: bool) -> bool:
    return trust_remote_code or os.environ.get(TRUST_REMOTE_CODE_ENV) == "1"


def check_remote_code(path: Path, cfg: dict[str, Any], trust_remote_code: bool) -> None:
    """Refuse a model whose config or tokenizer config asks transformers to import its own
    Python files (``auto_map``), unless the user allowed it on purpose."""
    if remote_code_allowed(trust_remote_code):
        return
    found: dict[str, Any] = {}
    if cfg.get("auto_map"):
        found["config.json"] = cfg["auto_map"]
    tok_cfg = path / "tokenizer_config.json"
    if tok_cfg.is_file():
        try:
            t = json.loads(tok_cfg.read_text())
        except (OSError, ValueError):
            t = {}
        if isinstance(t, dict) and t.get("auto_map"):
            found["tokenizer_config.json"] = t["auto_map"]
    if not found:
        return
    refs = sorted(
        {str(v) for m in found.values() for v in (m.values() if isinstance(m, dict) else [m]) if v}
    )
    raise ModelLoadError(
        f"{path} asks to run its own Python code ({', '.join(found)} auto_map: {_names(refs, 3)}); "
        "slimline never runs a model's code unless told to",
        "if it is a standard family (llama, mistral, qwen2, gpt2, opt, bert), delete the auto_map "
        f"entry; to run its code anyway, pass trust_remote_code=True to load_model or set "
        f"{TRUST_REMOTE_CODE_ENV}=1",
    )


def check_finite_metrics(
    metrics: dict[str, Any],
    where: str,
    model: nn.Module | None = None,
    probe: Callable[[], torch.Tensor] | None = None,
) -> None:
    """Refuse NaN/Inf metrics; with ``model`` and ``probe`` (returns token ids, called only on
    failure), name the first module whose output went non-finite (the tensor to look at)."""
    bad = sorted(
        k
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)
    )
    if not bad:
        return
    culprit = None
    if model is not None and probe is not None:
        culprit = first_nonfinite_output(model, probe())
    at = f"; the first module with a non-finite output is {culprit}" if culprit else ""
    raise NonFiniteError(
        f"{where}: non-finite metrics "
        + _names([f"{k} = {metrics[k]}" for k in bad], 4)
        + f" ({len(bad)} of {len(metrics)}){at}",
        "the model overflows on this text: evaluate the model it was made from to find the step "
        "that broke it, and re-create it from there",
    )
