"""Check an export inside its engine: same windows through the engine (llama.cpp, ONNX Runtime)
and torch, compared.

Two references, two questions:

* **the same weights** — torch holding exactly what the file holds (``file_weight_model``):
  any difference is the engine's arithmetic (fp16/int8 activations in its kernels) or a wrong
  conversion (rotary layout, norms, biases). This is gated by ``Tolerance``.
* **our model** — the torch model as compressed: adds what requantization and the embedding's
  block type cost. Recorded (KL, top-1 agreement, perplexity), not gated: the per-tensor
  errors in the record say where it comes from.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from slimline.errors import IntegrityError


@dataclass(frozen=True)
class Tolerance:
    """Largest disagreement accepted between llama.cpp and torch on the same weights.

    Measured on SmolLM2-135M (4 python-docs windows of 128): an f32 file KL 8e-7, top-1 1.0;
    Q8_0 and Q4_0 files KL 3.4e-3 / 3.5e-3, top-1 0.977; GPTQ on the Q4_0 grid, 2 windows of
    64: KL 4.4e-3, top-1 0.930 — llama.cpp rounds activations to 8 bits per block of 32 in its
    quantized dot products. A wrong conversion (q/k rows not permuted to llama.cpp's rotary
    layout) gives KL ~11 and top-1 ~0.2 on a tiny llama.
    """

    kl: float = 0.02  # mean KL(torch || engine) per token, nats
    top1: float = 0.8  # share of positions with the same argmax (128 positions: 1 flip = 0.8%)


def compare_logits(ref: torch.Tensor, got: torch.Tensor) -> dict[str, Any]:
    """KL, top-1 agreement and max |logit difference| of ``got`` against ``ref`` (``[B, T, V]``),
    with the window and position where KL is largest."""
    lr = torch.log_softmax(ref.double(), -1)
    lg = torch.log_softmax(got.double(), -1)
    kl = (lr.exp() * (lr - lg)).sum(-1)  # [B, T]
    worst = int(kl.argmax())
    b, t = divmod(worst, kl.shape[1])
    return {
        "kl": float(kl.mean()),
        "kl_max": float(kl.max()),
        "agree/top1": float((ref.argmax(-1) == got.argmax(-1)).double().mean()),
        "max_abs_logit_diff": float((ref - got).abs().max()),
        "worst": {"window": b, "position": t},
    }


def perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """exp(mean next-token NLL) over every predicted token of every window (fp32 compute)."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    nll = -lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return float(math.exp(float(nll.double().mean())))


def windows_for(tokenizer: Any, vocab: int, n: int, seq_len: int) -> tuple[torch.Tensor, str]:
    """Fixed evaluation windows: python-docs eval text when there is a tokenizer, else seeded ids."""
    if tokenizer is not None:
        from slimline.data import eval_blocks

        return eval_blocks(tokenizer, "python-docs", seq_len=seq_len, max_blocks=n), "python-docs"
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (n, seq_len), generator=gen), "random ids, seed 0"


_SHOWN = {"llamacpp": "llama.cpp", "onnxruntime": "ONNX Runtime"}


@torch.no_grad()
def verify_gguf(
    path: str | os.PathLike[str],
    model: nn.Module,
    tokenizer: Any,
    *,
    reference: nn.Module | None = None,
    windows: int = 2,
    seq_len: int = 64,
    threads: int = 2,
    tolerance: Tolerance | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Run the GGUF at ``path`` in llama.cpp and compare with ``model`` (and ``reference``, the
    torch model holding the file's weights; default ``model``). Raises ``IntegrityError`` naming
    the window and position where they differ most when beyond ``tolerance``."""
    from slimline.engines.llamacpp import LlamaCppEngine

    with LlamaCppEngine(path, threads=threads, n_ctx=max(seq_len, 64)) as eng:
        return verify_in_engine(
            eng,
            model,
            tokenizer,
            reference=reference,
            windows=windows,
            seq_len=seq_len,
            tolerance=tolerance,
            label=label or str(path),
            fix="the conversion or the engine is wrong for this model: export with qtype f32 to "
            "isolate a block type, or pass verify=False (--no-verify) to keep the file unverified",
        )


@torch.no_grad()
def verify_in_engine(
    eng: Any,
    model: nn.Module,
    tokenizer: Any,
    *,
    reference: nn.Module | None = None,
    windows: int = 2,
    seq_len: int = 64,
    tolerance: Tolerance | None = None,
    label: str = "the export",
    fix: str = "re-export the model",
) -> dict[str, Any]:
    """Compare an open ``Engine`` (an export loaded in it) with ``model`` and ``reference`` (the
    torch model holding the file's weights; default ``model``) on fixed windows; the record
    holds both comparisons and the perplexities. Beyond ``tolerance`` on the same weights it
    raises ``IntegrityError`` naming the window and position where they differ most, with
    ``fix``."""
    tol = tolerance or Tolerance()
    reference = reference if reference is not None else model
    vocab = int(model.get_input_embeddings().num_embeddings)
    ids, data = windows_for(tokenizer, vocab, windows, seq_len)
    got = eng.logits(ids)
    engine = eng.describe()
    model_logits = model(input_ids=ids, use_cache=False).logits.float()
    ref_logits = (
        model_logits
        if reference is model
        else reference(input_ids=ids, use_cache=False).logits.float()
    )
    same = compare_logits(ref_logits, got)
    ours = compare_logits(model_logits, got)
    rec = {
        "verified": True,
        "engine": engine,
        "data": data,
        "windows": int(ids.shape[0]),
        "seq_len": int(ids.shape[1]),
        "same_weights": same,
        "vs_model": {
            "kl/teacher": ours["kl"],
            "agree/top1": ours["agree/top1"],
            "max_abs_logit_diff": ours["max_abs_logit_diff"],
        },
        f"ppl/{data}" if tokenizer is not None else "ppl/random": {
            "torch": perplexity(model_logits, ids),
            "torch_file_weights": perplexity(ref_logits, ids),
            eng.name: perplexity(got, ids),
        },
        "tolerance": asdict(tol),
    }
    if same["kl"] > tol.kl or same["agree/top1"] < tol.top1:
        w = same["worst"]
        raise IntegrityError(
            f"{_SHOWN.get(eng.name, eng.name)}'s logits for {label} differ from torch holding "
            f"the same weights: KL {same['kl']:.3g} (max {same['kl_max']:.3g} at window "
            f"{w['window']}, position {w['position']}), top-1 agreement "
            f"{same['agree/top1']:.3f}, max |logit diff| {same['max_abs_logit_diff']:.3g}; "
            f"tolerance KL <= {tol.kl}, top-1 >= {tol.top1}",
            fix,
        )
    return rec
