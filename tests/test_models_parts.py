"""The model parts pretrained architectures need: GELU tanh, norm eps, segments, embedding norm,
first-token pooling with a pooler head, a ViT's fixed image size."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnkit.models import ModelConfig, build_decoder_lm, build_encoder_classifier, build_vit
from attnkit.models.classifier import ClassifierHead, TransformerClassifier
from attnkit.models.embeddings import EmbeddingNorm, LearnedPositions
from attnkit.models.encoder import TokenInput
from attnkit.models.mlp import GeluMLP, build_mlp


def test_gelu_tanh_mlp_matches_the_formula():
    torch.manual_seed(0)
    mlp = build_mlp("gelu_tanh", dim=8, hidden=16)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    mlp = mlp.double()
    h = mlp.up(x)
    tanh_gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    torch.testing.assert_close(mlp(x), mlp.down(tanh_gelu))
    assert not torch.allclose(mlp(x), build_mlp("gelu", dim=8, hidden=16).double()(x))
    with pytest.raises(ValueError, match="approximate"):
        GeluMLP(dim=8, hidden=16, approximate="sigmoid")


def test_norm_eps_reaches_every_norm():
    model = build_decoder_lm(ModelConfig(d_model=16, num_heads=2, num_layers=2, d_ff=16,
                                         norm_eps=1e-12), vocab_size=10)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 5 and all(n.eps == 1e-12 for n in norms)


def test_first_token_pooling_with_segments_and_pooler_head():
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, num_heads=2, num_layers=1, d_ff=16, dropout=0.0,
                         norm_first=False, pooling="first")
    base = build_encoder_classifier(config, vocab_size=12, num_classes=3)
    model = TransformerClassifier(
        embed=TokenInput(vocab_size=12, dim=16, segments=2),
        positions=EmbeddingNorm(positions=LearnedPositions(max_length=10, dim=16),
                                norm=nn.LayerNorm(16)),
        stack=base.stack, num_classes=3, dim=16, pooling="first",
        head=ClassifierHead(pooler=nn.Linear(16, 16), classifier=nn.Linear(16, 3))).eval()
    ids = torch.randint(1, 12, (2, 7))
    states, _ = model.hidden_states(ids)
    head = model.head
    assert isinstance(head, ClassifierHead) and head.classifier is not None
    expected = head.classifier(torch.tanh(head.pooler(states[:, 0])))
    torch.testing.assert_close(model(ids), expected)
    types = torch.ones_like(ids)
    assert not torch.allclose(model(ids, token_types=types), model(ids))
    with pytest.raises(ValueError, match="token_types"):
        model(ids, token_types=types[:, :3])
    with pytest.raises(ValueError, match="segment"):
        base(ids, token_types=types)


def test_vit_refuses_other_image_sizes():
    model = build_vit(ModelConfig(d_model=16, num_heads=2, num_layers=1, d_ff=16,
                                  patch_size=4), image_shape=(1, 8, 8), num_classes=2)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 2)
    with pytest.raises(ValueError, match=r"built for \(8, 8\)"):
        model(torch.randn(1, 1, 12, 12))
