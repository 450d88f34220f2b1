"""Sequence-level KD (Kim & Rush 2016): train the student on the teacher's own generations.

The teacher answers prompts; each generation is scored on length, repetition (share of repeated
word 3-grams) and the teacher's mean confidence in the tokens it chose; the kept set is saved as
JSONL with its provenance (teacher, generation parameters, filter statistics) so a reviewer can
see what the student was trained on.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from slimline.errors import ConfigError, DataError
from slimline.models import LoadedModel
from slimline.progress import track

__all__ = ["SequenceFilter", "generate_sequences", "load_sequences", "repetition_ratio"]


@dataclass(frozen=True)
class SequenceFilter:
    """Keep a generation only if it is long enough, not looping, and the teacher was confident."""

    min_tokens: int = 8
    max_tokens: int = 10_000
    max_repetition: float = 0.5  # share of repeated word 3-grams
    min_confidence: float = 0.3  # teacher's mean probability of its chosen tokens


def repetition_ratio(text: str, n: int = 3) -> float:
    """1 - unique/total word n-grams: 0 for fresh text, near 1 for a loop."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


@torch.no_grad()
def generate_sequences(
    teacher: LoadedModel,
    prompts: Sequence[str],
    path: str | os.PathLike[str],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    filt: SequenceFilter = SequenceFilter(),
) -> dict[str, Any]:
    """Generate from ``teacher`` on ``prompts``, filter, write the kept set to ``path`` (JSONL,
    atomically) and return the provenance record (also written to ``<path>.meta.json``)."""
    if teacher.kind != "causal-lm":
        raise ConfigError(
            "sequence-level KD needs a generating (causal-LM) teacher", "use a causal LM"
        )
    if not prompts:
        raise DataError("no prompts to generate from", "pass at least one prompt")
    tok, model = teacher.tokenizer, teacher.model
    params = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
    }
    torch.manual_seed(seed)
    kept, reasons = [], {"too_short": 0, "too_long": 0, "repetitive": 0, "unconfident": 0}
    for prompt in track(prompts, "teacher generations"):
        enc = tok(prompt, return_tensors="pt")
        gen_kw: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "output_scores": True,
            "return_dict_in_generate": True,
            "pad_token_id": tok.pad_token_id or tok.eos_token_id,
        }
        if do_sample:
            gen_kw.update(temperature=temperature, top_p=top_p)
        out = model.generate(**enc, **gen_kw)
        new = out.sequences[0, enc["input_ids"].shape[1] :]
        probs = [
            torch.softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, new, strict=False)
        ]
        text = tok.decode(new, skip_special_tokens=True)
        stats = {
            "tokens": int(new.numel()),
            "repetition": round(repetition_ratio(text), 4),
            "confidence": round(sum(probs) / max(len(probs), 1), 4),
        }
        if stats["tokens"] < filt.min_tokens:
            reasons["too_short"] += 1
        elif stats["tokens"] > filt.max_tokens:
            reasons["too_long"] += 1
        elif stats["repetition"] > filt.max_repetition:
            reasons["repetitive"] += 1
        elif stats["confidence"] < filt.min_confidence:
            reasons["unconfident"] += 1
        else:
            kept.append(
                {"prompt": prompt, "completion": text, "text": prompt + text, "stats": stats}
            )
    provenance = {
        "teacher": teacher.source,
        "teacher_params": sum(p.numel() for p in model.parameters()),
        "generation": params,
        "filter": asdict(filt),
        "prompts": len(prompts),
        "kept": len(kept),
        "rejected": reasons,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, body in (
        (path, "".join(json.dumps({**r, "teacher": teacher.source}) + "\n" for r in kept)),
        (path.with_name(path.name + ".meta.json"), json.dumps(provenance, indent=2) + "\n"),
    ):
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.replace(tmp, target)
    return provenance


def load_sequences(
    path: str | os.PathLike[str], tokenizer: Any, seq_len: int = 256
) -> dict[str, torch.Tensor]:
    """The kept generations as right-padded ``input_ids`` + ``attention_mask`` for the trainer."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no sequence file at {path}", "create it with generate_sequences()")
    texts = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            texts.append(json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError) as e:
            raise DataError(
                f"{path}:{i + 1} is not a record with a 'text' field", "regenerate the file"
            ) from e
    if not texts:
        raise DataError(
            f"{path} holds no sequences (the filter kept none?)", "loosen the SequenceFilter"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    enc = tokenizer(
        texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"
    )
    enc_ids = enc["input_ids"]
    mask = enc["attention_mask"]
    if tokenizer.padding_side == "left":  # the trainer's masks assume right padding
        order = torch.argsort(1 - mask, dim=1, stable=True)
        enc_ids, mask = enc_ids.gather(1, order), mask.gather(1, order)
    return {"input_ids": enc_ids, "attention_mask": mask}
