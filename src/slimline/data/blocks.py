"""Tokenise text and pack it into fixed-length blocks: calibration, training and eval sets.

Calibration windows (random offsets, seeded) and training blocks come from the fit part of a
source; training can exclude every block a calibration window touches, so the two never share a
token. Eval blocks are the first non-overlapping windows of the eval part (BENCH.md).
"""

from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from slimline.data.sources import text_part
from slimline.errors import DataError


def _tok_key(tok: Any) -> str:
    return f"{getattr(tok, 'name_or_path', '')}|{len(tok)}|{type(tok).__name__}"


_TOKENIZERS: dict[str, Any] = {}


@lru_cache(maxsize=32)
def _token_ids(tok_key: str, source: str, part: str, field: str) -> torch.Tensor:
    tok = _TOKENIZERS[tok_key]
    text = text_part(source, part, field)
    ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def token_ids(tok: Any, source: str, part: str = "fit", field: str = "text") -> torch.Tensor:
    """All token ids of a source's part, tokenised once per process."""
    key = _tok_key(tok)
    _TOKENIZERS[key] = tok
    return _token_ids(key, source, part, field)


def pack(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping ``[n, seq_len]`` blocks; the incomplete tail is dropped."""
    if seq_len < 2:
        raise DataError(
            f"seq_len must be at least 2 (got {seq_len})", "use a window of 2 or more tokens"
        )
    n = ids.numel() // seq_len
    return ids[: n * seq_len].view(n, seq_len)


# Calibration windows are drawn at random offsets, so they overlap a little by design (BENCH.md's
# 128 x 512 tokens from python-docs' ~57k fit tokens uses each token ~1.15 times). Asking for far
# more window tokens than the text holds silently re-feeds the same tokens: warn past WARN_REUSE,
# refuse past MAX_REUSE (average uses per token = windows x window length / tokens).
WARN_REUSE = 2.0
MAX_REUSE = 8.0


def check_reuse(source: str, n_tokens: int, n: int, seq_len: int) -> float:
    """Average uses per token of ``n`` windows of ``seq_len`` over ``n_tokens``: warns past
    ``WARN_REUSE``, raises ``DataError`` past ``MAX_REUSE``. Returns the figure."""
    reuse = n * seq_len / max(n_tokens, 1)
    asked = f"{n} calibration windows of {seq_len} tokens ({n * seq_len:,} tokens)"
    have = f"{source} has {n_tokens:,} tokens to calibrate on"
    if reuse > MAX_REUSE:
        most = max(1, int(MAX_REUSE * n_tokens // seq_len))
        raise DataError(
            f"{asked} from text that holds fewer: {have}, so each token would be used "
            f"~{reuse:.0f} times (at most {MAX_REUSE:g} allowed)",
            f"ask for at most {most} windows of {seq_len} tokens (--calib-samples, or data."
            "calibration.n in a recipe), use shorter windows, or calibrate on more text",
        )
    if reuse > WARN_REUSE:
        warnings.warn(
            f"{asked}: {have}, so the windows overlap and each token is used ~{reuse:.1f} times "
            "on average; calibrate on more text to see more distinct data",
            stacklevel=3,
        )
    return reuse


def _calib_starts(n_tokens: int, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """Start offsets of ``n`` seeded windows inside ``n_tokens`` (BENCH.md: random windows)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_tokens - seq_len + 1, (n,), generator=g)


def mixed_sources(source: str) -> list[str]:
    """``"python-docs+shakespeare"`` -> both names; an existing path is one source even with '+'."""
    if "+" not in source or Path(source).exists():
        return [source]
    return [p.strip() for p in source.split("+") if p.strip()]


def calibration_blocks(
    tok: Any,
    source: str = "python-docs",
    n: int = 128,
    seq_len: int = 512,
    seed: int = 0,
    field: str = "text",
) -> torch.Tensor:
    """``n`` seeded windows of ``seq_len`` tokens at random offsets in the fit part of ``source``.

    ``"a+b"`` mixes sources (n split evenly, the first ones take the remainder): calibrating on
    more than one domain keeps GPTQ/AWQ from fitting the calibration domain alone.
    """
    parts = mixed_sources(source)
    if len(parts) > 1 and n >= len(parts):
        shares = [n // len(parts) + (i < n % len(parts)) for i in range(len(parts))]
        return torch.cat(
            [
                calibration_blocks(tok, p, k, seq_len, seed + i, field)
                for i, (p, k) in enumerate(zip(parts, shares, strict=True))
            ]
        )
    if n < 1:
        raise DataError(f"calibration needs at least 1 sample (got {n})", "pass n >= 1")
    if seq_len < 2:
        raise DataError(
            f"seq_len must be at least 2 (got {seq_len})", "use a window of 2 or more tokens"
        )
    ids = token_ids(tok, source, "fit", field)
    if ids.numel() < seq_len:
        raise DataError(
            f"{source} has {ids.numel()} tokens to calibrate on, fewer than one window of {seq_len}",
            "use a shorter sequence length or more text",
        )
    check_reuse(source, ids.numel(), n, seq_len)
    starts = _calib_starts(ids.numel(), n, seq_len, seed)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def train_blocks(
    tok: Any,
    source: str = "python-docs",
    seq_len: int = 512,
    seed: int = 0,
    exclude_calib: int = 0,
    calib_seq_len: int = 512,
    field: str = "text",
) -> torch.Tensor:
    """Non-overlapping ``seq_len`` blocks of the fit part, minus every block that overlaps one of
    the ``exclude_calib`` calibration windows drawn with ``seed`` (so train and calibration data
    never share a token when a recipe uses both)."""
    ids = token_ids(tok, source, "fit", field)
    blocks = pack(ids, seq_len)
    keep = torch.ones(blocks.shape[0], dtype=torch.bool)
    if exclude_calib and ids.numel() >= calib_seq_len:
        for s in _calib_starts(ids.numel(), exclude_calib, calib_seq_len, seed).tolist():
            first, last = s // seq_len, (s + calib_seq_len - 1) // seq_len
            keep[first : last + 1] = False
    out = blocks[keep].clone()
    if out.shape[0] == 0:
        raise DataError(
            f"{source} leaves no training blocks of {seq_len} tokens after excluding {exclude_calib} calibration windows",
            "use fewer calibration samples, shorter blocks or more text",
        )
    return out


def eval_blocks(
    tok: Any,
    source: str = "python-docs",
    seq_len: int = 512,
    max_blocks: int | None = 64,
    field: str = "text",
) -> torch.Tensor:
    """The first non-overlapping ``seq_len`` windows of the eval part (at most ``max_blocks``)."""
    ids = token_ids(tok, source, "eval", field)
    blocks = pack(ids, seq_len)
    if blocks.shape[0] == 0:
        raise DataError(
            f"{source} eval text has {ids.numel()} tokens, fewer than one window of {seq_len}",
            "use a shorter --seq-len or more text",
        )
    if max_blocks is not None:
        if max_blocks < 1:
            raise DataError(
                f"max_blocks must be at least 1 (got {max_blocks})", "ask for 1 or more windows"
            )
        blocks = blocks[:max_blocks]
    return blocks.clone()


def sentences(
    source: str = "python-docs",
    split: str = "eval",
    n: int = 256,
    min_chars: int = 40,
    max_chars: int = 600,
    field: str = "text",
) -> list[str]:
    """Paragraph-sized texts from a source's part, for encoders (embeddings, retrieval)."""
    part = "eval" if split == "eval" else "fit"
    paras = [" ".join(p.split()) for p in text_part(source, part, field).split("\n\n")]
    out = [p for p in paras if min_chars <= len(p) <= max_chars]
    if not out:
        raise DataError(
            f"{source} has no paragraphs of {min_chars}-{max_chars} characters",
            "use a source with prose paragraphs",
        )
    return out[:n]


def fingerprint(ids: torch.Tensor) -> str:
    """A short content hash of a token tensor: what the registry records as the data used."""
    return hashlib.sha256(
        ids.contiguous().numpy().tobytes() + str(tuple(ids.shape)).encode()
    ).hexdigest()[:16]
