import pytest
import torch

from slimline.calib import run_blocks
from slimline.data import calibration_blocks
from slimline.errors import DataError
from slimline.models import tiny_model

FAMILIES = ("llama", "mistral", "qwen2", "gpt2", "opt", "bert")


@pytest.mark.parametrize("family", FAMILIES)
def test_block_by_block_outputs_equal_the_full_forward(family):
    lm = tiny_model(family, n_blocks=3)
    ids = torch.randint(0, min(1000, len(lm.tokenizer)), (4, 24))
    with torch.no_grad():
        ref = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    outs = []

    def cb(step):
        outs.append(torch.cat(step.forward()))
        return {"tokens": step.n_tokens}

    recs = run_blocks(lm.model, ids, cb, batch_size=3)
    assert [r["block"] for r in recs] == [0, 1, 2] and recs[0]["tokens"] == 4 * 24
    # every block but the last (whose output the final norm changes in hidden_states)
    for i in range(2):
        torch.testing.assert_close(outs[i], ref[i + 1], rtol=0, atol=1e-5)


def test_changes_to_a_block_propagate_to_the_next_blocks_inputs():
    lm = tiny_model("llama", n_blocks=2)
    ids = torch.randint(0, 1000, (2, 16))
    seen = {}

    def cb(step):
        seen[step.index] = torch.cat(step.inputs).clone()
        if step.index == 0:
            step.block.mlp.down_proj.weight.data.zero_()
            step.block.self_attn.o_proj.weight.data.zero_()

    run_blocks(lm.model, ids, cb)
    # with block 0's residual branches zeroed, block 1 sees block 0's inputs unchanged
    torch.testing.assert_close(seen[1], seen[0])


def test_capture_hooks_see_every_linear_input(smollm2_2blocks):
    lm = smollm2_2blocks
    ids = calibration_blocks(lm.tokenizer, n=4, seq_len=32)
    counts = {}

    def cb(step):
        lins = step.linears(ignore=["o_proj"])
        assert all(n.startswith(step.name + ".") for n in lins)

        def fn(name, mod, inp, out):
            counts[name] = counts.get(name, 0) + inp.shape[0] * inp.shape[1]

        with step.capture(lins, fn):
            step.forward()

    run_blocks(lm.model, ids, cb, batch_size=2)
    assert len(counts) == 2 * 6  # q k v gate up down per block, o_proj ignored
    assert set(counts.values()) == {4 * 32}


def test_only_selected_blocks_get_the_callback():
    lm = tiny_model("llama", n_blocks=3)
    ids = torch.randint(0, 1000, (2, 8))
    hit = []
    run_blocks(lm.model, ids, lambda s: hit.append(s.index), blocks=[1])
    assert hit == [1]


def test_bad_calibration_data_is_refused():
    lm = tiny_model("llama")
    with pytest.raises(DataError, match="token ids"):
        run_blocks(lm.model, torch.randn(2, 8), lambda s: None)
    with pytest.raises(DataError, match="at least 4"):
        run_blocks(lm.model, torch.zeros(2, 8, dtype=torch.long), lambda s: None, min_samples=4)
