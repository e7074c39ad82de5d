"""GPT-2 checkpoints <-> attnkit DecoderLM: logit parity, greedy tokens, round trip, refusals."""

from __future__ import annotations

import pytest
import torch

import attnkit.hf
from attnkit.models import DecoderLM, ModelConfig, build_decoder_lm
from hf_builders import relative_error, save, tiny_gpt2, transformers


def test_folder_logits_match(tmp_path):
    hf = tiny_gpt2()
    model = attnkit.hf.load(save(hf, tmp_path / "gpt2"))
    assert isinstance(model, DecoderLM)
    tokens = torch.randint(0, 97, (3, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs, ours = hf(tokens).logits, model(tokens)
    assert theirs.abs().max() > 1.0  # not a near-uniform output
    assert relative_error(ours, theirs) < 1e-4


def test_live_model_and_untied_head(tmp_path):
    hf = tiny_gpt2(tie_word_embeddings=False, activation_function="gelu", layer_norm_epsilon=1e-6)
    model = attnkit.hf.load(hf)
    assert model.head.weight is not model.embedding.table.weight
    tokens = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert relative_error(model(tokens), hf(tokens).logits) < 1e-4


def test_greedy_generation_gives_hf_tokens(tmp_path):
    hf = tiny_gpt2()
    model = attnkit.hf.load(save(hf, tmp_path / "gpt2"))
    prompt = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(3))
    theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0,
                         eos_token_id=None)
    ours = model.generate(prompt, max_new_tokens=20)
    assert ours.tolist() == theirs.tolist()


def test_round_trip_attnkit_to_hf(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, num_heads=4, num_layers=2, d_ff=48, dropout=0.0,
                         max_length=40, mlp="gelu_tanh")
    model = build_decoder_lm(config, vocab_size=53).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    folder = attnkit.hf.save(model, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens = torch.randint(0, 53, (2, 40))
    with torch.no_grad():
        assert relative_error(hf(tokens).logits, model(tokens)) < 1e-4
    again = attnkit.hf.load(folder)
    with torch.no_grad():
        assert torch.equal(again(tokens), model(tokens))


@pytest.mark.parametrize(("option", "value"), [
    ("scale_attn_by_inverse_layer_idx", True), ("add_cross_attention", True),
    ("activation_function", "relu")])
def test_unsupported_options_are_named(tmp_path, option, value):
    hf = tiny_gpt2(**{option: value})
    with pytest.raises(ValueError, match=option):
        attnkit.hf.load(save(hf, tmp_path / "gpt2"))


def test_unsupported_architecture_and_pickles_are_refused(tmp_path):
    bart = transformers.BartConfig(vocab_size=40, d_model=16, encoder_layers=1,
                                   decoder_layers=1, encoder_attention_heads=2,
                                   decoder_attention_heads=2, encoder_ffn_dim=16,
                                   decoder_ffn_dim=16)
    folder = save(transformers.BartModel(bart), tmp_path / "bart")
    with pytest.raises(ValueError, match=r"'bart'.*supports"):
        attnkit.hf.load(folder)
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pickle"):
        attnkit.hf.load(tmp_path / "pickled")


def test_save_refuses_what_gpt2_cannot_express(tmp_path):
    model = build_decoder_lm(ModelConfig(d_model=32, num_heads=4, num_layers=1, d_ff=32,
                                         positional="rope"), vocab_size=20)
    with pytest.raises(ValueError, match=r"rope|positions"):
        attnkit.hf.save(model, tmp_path / "x")
