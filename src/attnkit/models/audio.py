"""Audio Transformer over frame features (MFCC or log-mel), e.g. keyword / spoken digit recognition.

Shape legend: B batch, T frames, F features per frame, D model width.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnkit.models.builders import build_stack
from attnkit.models.classifier import TransformerClassifier, valid_from_lengths
from attnkit.models.config import ModelConfig
from attnkit.models.embeddings import build_positions
from attnkit.models.norms import build_norm

__all__ = ["FrameEmbedding", "build_audio_transformer"]


class FrameEmbedding(nn.Module):
    """Frames (B, T, F) -> normalized, projected (B, T, D), plus which frames are real."""

    def __init__(self, *, features: int, dim: int, norm: str = "layernorm") -> None:
        super().__init__()
        self.norm = build_norm(norm, features)
        self.proj = nn.Linear(features, dim)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if x.dim() != 3:
            raise ValueError(f"audio input must be (batch, frames, features), got "
                             f"{tuple(x.shape)}")
        return self.proj(self.norm(x)), valid_from_lengths(lengths, x.shape[1], x.shape[0],
                                                           x.device)


def build_audio_transformer(config: ModelConfig, *, features: int, num_classes: int
                            ) -> TransformerClassifier:
    """Classifier over ``features``-wide frames; padded frames are masked out of attention."""
    extra = 1 if config.pooling == "cls" else 0
    return TransformerClassifier(
        embed=FrameEmbedding(features=features, dim=config.d_model, norm=config.norm),
        positions=build_positions(config.positional, max_length=config.max_length + extra,
                                  dim=config.d_model),
        stack=build_stack(config, num_layers=config.num_layers,
                          max_length=config.max_length + extra),
        num_classes=num_classes, dim=config.d_model, pooling=config.pooling,
        dropout=config.dropout)
