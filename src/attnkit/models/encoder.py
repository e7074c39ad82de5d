"""Encoder classifier over token sequences (text or any token ids), BERT-style.

Shape legend: B batch, L tokens, D model width, C classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnkit.models.blocks import TransformerStack
from attnkit.models.builders import build_stack
from attnkit.models.classifier import TransformerClassifier, valid_from_lengths
from attnkit.models.config import ModelConfig
from attnkit.models.embeddings import TokenEmbedding, build_positions

__all__ = ["TokenInput", "build_encoder_classifier"]


class TokenInput(nn.Module):
    """Token ids (B, L) -> (vectors (B, L, D), real-token mask (B, L)).

    Real tokens are the first ``lengths[b]`` when given, else every id other than ``pad_id``.
    With ``segments`` (BERT's token-type embedding, one row per segment), each token also gets
    its segment's vector: ``token_types`` (B, L) ids, all 0 (one segment) when not given.
    """

    def __init__(self, *, vocab_size: int, dim: int, pad_id: int = 0,
                 segments: int | None = None) -> None:
        super().__init__()
        self.tokens = TokenEmbedding(vocab_size=vocab_size, dim=dim)
        self.segments = nn.Embedding(segments, dim) if segments else None
        self.pad_id = pad_id

    def forward(self, x: Tensor, lengths: Tensor | None = None,
                token_types: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if x.dim() != 2:
            raise ValueError(f"token input must be (batch, length) ids, got {tuple(x.shape)}")
        valid = valid_from_lengths(lengths, x.shape[1], x.shape[0], x.device)
        if valid is None:
            valid = x != self.pad_id
        h = self.tokens(x)  # (B, L, D)
        if self.segments is not None:
            types = torch.zeros_like(x) if token_types is None else token_types
            if types.shape != x.shape:
                raise ValueError(f"token_types {tuple(types.shape)} must match the token ids "
                                 f"{tuple(x.shape)}")
            h = h + self.segments(types)
        elif token_types is not None:
            raise ValueError("token_types given but this model has no segment embedding")
        return h, valid


def build_encoder_classifier(config: ModelConfig, *, vocab_size: int, num_classes: int,
                             pad_id: int = 0, stack: TransformerStack | None = None
                             ) -> TransformerClassifier:
    """Token-sequence classifier: embedding, positions, encoder stack, pooled linear head."""
    extra = 1 if config.pooling == "cls" else 0
    return TransformerClassifier(
        embed=TokenInput(vocab_size=vocab_size, dim=config.d_model, pad_id=pad_id),
        positions=build_positions(config.positional, max_length=config.max_length + extra,
                                  dim=config.d_model),
        stack=stack or build_stack(config, num_layers=config.num_layers,
                                   max_length=config.max_length + extra),
        num_classes=num_classes, dim=config.d_model, pooling=config.pooling,
        dropout=config.dropout)
