"""The long-context task scores the tokens that carry the pass key, not the bare-space token a
digit-splitting tokenizer (SmolLM2's) puts in front of them: that token's greedy guess after
"The pass key is" (" the" as often as " ") once made a model that repeats every digit score
consistency 0 at 256 and 2048 tokens."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from slimline.eval.longctx import LongContext, passkey_prompt, run_longctx
from slimline.eval.tasks import TaskContext
from slimline.models import tiny_model


class CopyEngine:
    """Predicts each next token of the prompt itself, except that before every bare-space token
    but the last (the late answer's) it guesses ``wrong``: SmolLM2's behaviour, which knows the
    key early and late but opens the early answer with " the"."""

    name = "copy"
    max_length = None

    def __init__(self, tokenizer, wrong: int):
        self.tokenizer, self.wrong = tokenizer, wrong
        self.space = {i for i in range(300) if tokenizer.decode([i]) == " "}

    def logits(self, windows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for w in windows:
            nxt = torch.cat([w[1:], w[-1:]])
            spaces = [i for i, t in enumerate(nxt.tolist()) if t in self.space]
            guess = nxt.clone()
            guess[spaces[:-1]] = self.wrong
            out.append(torch.nn.functional.one_hot(guess, int(guess.max()) + 1).float())
        return out

    def generate(self, prompt_ids: torch.Tensor, n: int) -> torch.Tensor:
        raise NotImplementedError


@pytest.fixture(scope="module")
def tok():
    return tiny_model("llama").tokenizer


def test_key_tokens_exclude_the_leading_space_and_point_at_the_key(tok):
    ids, key_ids, starts = passkey_prompt(tok, 512, 49673, 0.15)
    assert tok.decode(key_ids) == "49673"  # SmolLM2 encodes " 49673" as "Ġ" + five digits
    assert len(tok(" 49673", add_special_tokens=False)["input_ids"]) == len(key_ids) + 1
    for s in starts:
        assert ids[s : s + len(key_ids)] == key_ids
        assert tok.decode([ids[s - 1]]) == " "


def test_a_model_that_repeats_the_digits_is_consistent_whatever_it_guesses_for_the_space(tok):
    the = tok(" the", add_special_tokens=False)["input_ids"][0]
    eng = CopyEngine(tok, the)
    ctx = TaskContext(model=eng, reference=CopyEngine(tok, the))
    res = run_longctx(LongContext(lengths=(256, 512), n=2), ctx)
    for n in (256, 512):
        assert res.metrics[f"passkey/{n}"] == 1.0
        assert res.metrics[f"consistency/{n}"] == 1.0  # was 0.0 while the space was scored
