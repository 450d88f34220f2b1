import pytest
import torch

from slimline.errors import ConfigError, UnsupportedArchitectureError
from slimline.export import dense_weight, export_gguf
from slimline.lowrank import factorize
from slimline.models import load_model, tiny_model


def test_gguf_export_round_trips_through_the_gguf_loader_exactly(tmp_path, small_vocab_llama):
    lm = small_vocab_llama
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "tiny.gguf", qtype="f32", verify=False)
    back = load_model(res.path)
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
    res = export_gguf(lm.model, lm.tokenizer, tmp_path / "q8.gguf", qtype="q8_0", verify=False)
    back = load_model(res.path)
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
