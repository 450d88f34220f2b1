"""Long context: passkey retrieval at several lengths, and early/late consistency.

A five-digit pass key is stated near the start of a long prompt of filler (Mohtashami & Jaggi
2023), asked right away (early) and again at the very end (late). In one teacher-forced pass we
read the greedy answer at both places: ``passkey/<ctx>`` = the late answer is the key,
``consistency/<ctx>`` = the late answer equals the early one, ``flip/passkey/<ctx>`` = the late
answer differs from the reference's, ``flip/longctx/<ctx>`` = share of the prompt's last quarter
whose greedy token differs from the reference's (many tokens: stable even on a weak model). KV-cache quantization (KIVI-style) only hurts once the key
sits in the quantized cache, so ``kv_bits`` adds the same scores with the cache quantized
(``passkey/<ctx>/kv<bits>``): a collapse at long context shows while short perplexity stays put.
"""

from __future__ import annotations

import random

import torch

from slimline.eval.engine import LogitsEngine, TorchEngine
from slimline.eval.tasks import TaskConfig, TaskContext, TaskResult, register_task

HEAD = (
    "There is an important pass key hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it."
)
FILLER = (
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)
QUESTION = " What is the pass key? The pass key is"


class LongContext(TaskConfig):
    """Passkey retrieval and consistency per context length (tokens); lengths beyond the
    model's window are skipped with the reason."""

    name = "longctx"
    lengths: tuple[int, ...] = (512, 1024, 2048)
    n: int = 2  # keys per length
    depth: float = 0.15  # where the key sits, as a share of the filler
    kv_bits: tuple[int, ...] = ()
    kv_group_size: int | None = None
    seed: int = 0


def passkey_prompt(
    tok: object, length: int, key: int, depth: float
) -> tuple[list[int], list[int], list[int]]:
    """Token ids of about ``length`` tokens, the ids that carry the key (leading whitespace-only
    tokens dropped), and where they start in the early and late answers."""

    def enc(s: str) -> list[int]:
        return list(tok(s, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    head, filler, q = enc(HEAD), enc(FILLER), enc(QUESTION)
    key_ids = enc(f" {key}")
    needle = enc(f" The pass key is {key}. Remember it. {key} is the pass key.")
    dot = enc(".")
    fixed = len(head) + len(needle) + 2 * len(q) + 2 * len(key_ids) + len(dot)
    reps = max(0, (length - fixed) // len(filler))
    before = round(reps * depth)
    ids = head + filler * before + needle + q
    early = len(ids)
    ids += key_ids + dot + filler * (reps - before) + q
    late = len(ids)
    ids += key_ids
    # A tokenizer that splits digits (SmolLM2: " 49673" -> "Ġ", "4", "9", ...) opens the key with
    # a bare-space token. Its greedy guess after "The pass key is" is a guess at what kind of
    # word comes next (" the" is as plausible as " "), not at the key: scored, it turned a model
    # that repeats every digit into consistency 0. Only the tokens that carry the key are scored.
    lead = 0
    while lead < len(key_ids) - 1 and not tok.decode([key_ids[lead]]).strip():  # type: ignore[attr-defined]
        lead += 1
    return ids, key_ids[lead:], [early + lead, late + lead]


def _answers(engine: LogitsEngine, ids: list[int], n_key: int, starts: list[int]) -> list[tuple]:
    """Greedy tokens at the early and late answers, and over the prompt's last quarter."""
    (lg,) = engine.logits([torch.tensor(ids)])
    late_part = tuple(lg[-(len(ids) // 4) :].argmax(-1).tolist())
    return [*(tuple(lg[s - 1 : s - 1 + n_key].argmax(-1).tolist()) for s in starts), late_part]


@register_task(LongContext)
def run_longctx(cfg: LongContext, ctx: TaskContext) -> TaskResult:
    res = TaskResult()
    engines: list[tuple[str, str, LogitsEngine]] = [(n, "", e) for n, e in ctx.engines()]
    for b in cfg.kv_bits:
        if ctx.loaded is None or not isinstance(ctx.model, TorchEngine):
            res.skipped.append(f"longctx kv{b}: the model's engine cannot swap its KV cache")
            continue
        quant = TorchEngine(ctx.loaded, kv_bits=b, kv_group_size=cfg.kv_group_size)
        engines.append(("model", f"/kv{b}", quant))
    tok = ctx.model.tokenizer
    window = ctx.model.max_length
    rng = random.Random(cfg.seed)
    keys = [rng.randint(10000, 99999) for _ in range(ctx.n(cfg.n))]
    for length in cfg.lengths:
        if window is not None and length > window:
            res.skipped.append(
                f"passkey/{length}: beyond the model's window of {window} tokens (skipped)"
            )
            continue
        prompts = [passkey_prompt(tok, length, k, cfg.depth) for k in keys]
        if len(prompts[0][0]) > length + 32:
            res.skipped.append(f"passkey/{length}: too short for the prompt's fixed text (skipped)")
            continue
        late_by: dict[str, list[tuple]] = {}
        for name, suffix, e in engines:
            right = same = 0
            late_by[name + suffix] = []
            for ids, key_ids, starts in prompts:
                early, late, tail = ctx.cached(
                    ("passkey", e, tuple(ids)),
                    lambda e=e, ids=ids, n=len(key_ids), s=starts: _answers(e, ids, n, s),
                )
                right += late == tuple(key_ids)
                same += late == early
                late_by[name + suffix].append((late, tail))
            out = res.metrics if name == "model" else res.reference
            out[f"passkey/{length}{suffix}"] = right / len(prompts)
            out[f"consistency/{length}{suffix}"] = same / len(prompts)
            if name == "reference":
                for b in cfg.kv_bits:  # what the uncompressed model does, for relative gates
                    out[f"passkey/{length}/kv{b}"] = right / len(prompts)
                    out[f"consistency/{length}/kv{b}"] = same / len(prompts)
        if "reference" in late_by:
            ref = late_by["reference"]
            for k, answers in late_by.items():
                if k.startswith("model"):
                    sfx = k[len("model") :]
                    flips = sum(a[0] != r[0] for a, r in zip(answers, ref, strict=True))
                    res.metrics[f"flip/passkey/{length}{sfx}"] = flips / len(ref)
                    toks = [
                        (x, y)
                        for a, r in zip(answers, ref, strict=True)
                        for x, y in zip(a[1], r[1], strict=True)
                    ]
                    res.metrics[f"flip/longctx/{length}{sfx}"] = sum(x != y for x, y in toks) / len(
                        toks
                    )
    return res
