import pytest
import torch

from slimline.errors import ConfigError, UnsupportedArchitectureError
from slimline.export import dense_weight, export_gguf
from slimline.lowrank import factorize
from slimline.models import LoadedModel, get_arch, load_model, tiny_config, tiny_model


@pytest.fixture(scope="module")
def small_vocab_llama():
    """A tiny llama with a 400-token byte-level BPE trained on python-docs: GGUF readers parse
    vocabularies token by token, and SmolLM2's 49k-token one takes ~20 s per read."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from slimline.data import load_text

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator([load_text("python-docs")[:50_000]], trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size=len(tok)))
    model.eval()
    return LoadedModel(model, tok, get_arch(model), "causal-lm", "tiny-bpe")


def test_gguf_export_round_trips_through_the_gguf_loader_exactly(tmp_path, small_vocab_llama):
    lm = small_vocab_llama
    path = export_gguf(lm.model, lm.tokenizer, tmp_path / "tiny.gguf", qtype="f32")
    back = load_model(path)
    text = "for x in range(3): print(x)"
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    assert torch.equal(back.tokenizer(text, return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids).logits, lm.model(ids).logits, rtol=0, atol=1e-5)


def test_compressed_layers_export_through_their_dense_weight(tmp_path, small_vocab_llama):
    import copy

    lm = copy.deepcopy(small_vocab_llama)
    blk = lm.model.model.layers[0]
    blk.mlp.down_proj = factorize(blk.mlp.down_proj, 8)
    torch.testing.assert_close(dense_weight(blk.mlp.down_proj), blk.mlp.down_proj.weight.detach())
    path = export_gguf(lm.model, lm.tokenizer, tmp_path / "q8.gguf", qtype="q8_0")
    back = load_model(path)
    ids = torch.randint(0, len(lm.tokenizer), (1, 10))
    with torch.no_grad():
        ref, got = lm.model(ids).logits, back.model(ids).logits
    assert (
        got - ref
    ).abs().max() < 0.05 * ref.abs().max()  # Q8_0: measured max error ~0.2% of range


def test_gguf_export_refuses_other_families_and_bad_types(tmp_path):
    with pytest.raises(UnsupportedArchitectureError):
        export_gguf(tiny_model("gpt2").model, None, tmp_path / "x.gguf")
    lm = tiny_model("llama")
    with pytest.raises(ConfigError, match="unknown GGUF type"):
        export_gguf(lm.model, lm.tokenizer, tmp_path / "x.gguf", qtype="q3_z")
    assert not list(tmp_path.iterdir())  # nothing half-written
