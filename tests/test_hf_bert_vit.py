"""BERT and ViT checkpoints <-> attnkit TransformerClassifier: parity with padding, round trips,
refusals."""

from __future__ import annotations

import pytest
import torch

import attnkit.hf
from attnkit.models import ModelConfig, TransformerClassifier, build_vit
from hf_builders import padded_batch, relative_error, save, tiny_bert, tiny_vit, transformers


def test_bert_classifier_logits_match_with_padding(tmp_path):
    hf = tiny_bert()
    model = attnkit.hf.load(save(hf, tmp_path / "bert"))
    assert isinstance(model, TransformerClassifier)
    ids, mask, lengths = padded_batch(89, [17, 9, 3, 12])
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        by_lengths, by_pad_id = model(ids, lengths), model(ids)
    assert relative_error(by_lengths, theirs) < 1e-4
    assert relative_error(by_pad_id, theirs) < 1e-4


def test_bert_token_types_and_bare_encoder(tmp_path):
    hf = tiny_bert(classifier=False, hidden_act="gelu_new", type_vocab_size=2)
    model = attnkit.hf.load(save(hf, tmp_path / "bert"))
    ids, mask, lengths = padded_batch(89, [11, 7], seed=1)
    types = (torch.arange(11)[None, :] >= 5).long().expand(2, -1).contiguous()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        pooled = model(ids, lengths, token_types=types)
        states, valid = model.hidden_states(ids, lengths, token_types=types)
    assert relative_error(pooled, out.pooler_output) < 1e-4
    assert valid is not None
    assert relative_error(states[valid], out.last_hidden_state[valid]) < 1e-4


def test_bert_round_trip(tmp_path):
    model = attnkit.hf.load(tiny_bert())
    folder = attnkit.hf.save(model, tmp_path / "out")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    ids, mask, lengths = padded_batch(89, [13, 6], seed=2)
    with torch.no_grad():
        assert relative_error(hf(input_ids=ids, attention_mask=mask).logits,
                              model(ids, lengths)) < 1e-4


def test_vit_classifier_logits_match(tmp_path):
    hf = tiny_vit()
    model = attnkit.hf.load(save(hf, tmp_path / "vit"))
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        theirs, ours = hf(pixel_values=images).logits, model(images)
    assert theirs.abs().max() > 1.0
    assert relative_error(ours, theirs) < 1e-4
    with pytest.raises(ValueError, match="resize"):
        model(torch.randn(1, 3, 20, 20))


def test_vit_model_pooler_and_rectangular_images(tmp_path):
    hf = tiny_vit(classifier=False, image_size=[12, 20])
    model = attnkit.hf.load(hf)
    images = torch.randn(2, 3, 12, 20, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert relative_error(model(images), hf(pixel_values=images).pooler_output) < 1e-4
    folder = attnkit.hf.save(model, tmp_path / "out")
    again = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        assert relative_error(again(pixel_values=images).pooler_output, model(images)) < 1e-4


def test_native_attnkit_vit_saves_as_hf(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, num_heads=4, num_layers=2, d_ff=64, dropout=0.0,
                         patch_size=4, pooling="cls")
    model = build_vit(config, image_shape=(1, 8, 8), num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    hf = transformers.AutoModelForImageClassification.from_pretrained(
        attnkit.hf.save(model, tmp_path / "vit")).eval()
    images = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert relative_error(hf(pixel_values=images).logits, model(images)) < 1e-4


@pytest.mark.parametrize(("build", "option", "value"), [
    (tiny_bert, "position_embedding_type", "relative_key"),
    (tiny_bert, "is_decoder", True),
    (tiny_vit, "qkv_bias", False),
])
def test_unsupported_options_are_named(tmp_path, build, option, value):
    with pytest.raises(ValueError, match=option):
        attnkit.hf.load(save(build(**{option: value}), tmp_path / "m"))


def test_refused_architectures_and_shapes(tmp_path):
    masked_lm = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16))
    with pytest.raises(ValueError, match="BertForMaskedLM"):
        attnkit.hf.load(masked_lm)
    mean_pooled = build_vit(ModelConfig(d_model=16, num_heads=2, num_layers=1, d_ff=16,
                                        patch_size=4, pooling="mean"),
                            image_shape=(1, 8, 8), num_classes=2)
    with pytest.raises(ValueError, match="class token"):
        attnkit.hf.save(mean_pooled, tmp_path / "x")
