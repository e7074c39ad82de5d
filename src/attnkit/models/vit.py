"""Vision Transformer (Dosovitskiy et al., 2021): images as sequences of patches.

Shape legend: B batch, C channels, H x W image, P patch side, N = (H/P)(W/P) patches, D width.
"""

from __future__ import annotations

from torch import Tensor, nn

from attnkit.models.builders import build_stack
from attnkit.models.classifier import TransformerClassifier
from attnkit.models.config import ModelConfig
from attnkit.models.embeddings import build_positions

__all__ = ["PatchEmbedding", "build_vit"]


class PatchEmbedding(nn.Module):
    """Cut (B, C, H, W) into P x P patches and project each linearly: (B, N, D).

    Equivalent plain math: ``x.unfold`` into patches, flatten each to C*P*P, multiply by W.
    A strided convolution computes exactly that.
    """

    def __init__(self, *, channels: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, None]:
        if x.dim() != 4:
            raise ValueError(f"images must be (batch, channels, height, width), got "
                             f"{tuple(x.shape)}")
        p = self.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"image {tuple(x.shape[-2:])} is not divisible into {p}x{p} "
                             f"patches; choose model.patch_size dividing both sides")
        return self.proj(x).flatten(2).transpose(1, 2), None  # (B, N, D); all patches real


def build_vit(config: ModelConfig, *, image_shape: tuple[int, ...], num_classes: int
              ) -> TransformerClassifier:
    """ViT for images of ``image_shape`` = (C, H, W); class token or mean pooling."""
    if len(image_shape) != 3:
        raise ValueError(f"ViT needs (channels, height, width) inputs, got shape {image_shape}")
    channels, height, width = image_shape
    p = config.patch_size
    if p < 1 or height % p or width % p:
        raise ValueError(f"patch_size={p} must divide the image size {height}x{width}")
    num_patches = (height // p) * (width // p)
    extra = 1 if config.pooling == "cls" else 0
    return TransformerClassifier(
        embed=PatchEmbedding(channels=channels, patch_size=p, dim=config.d_model),
        positions=build_positions(config.positional, max_length=num_patches + extra,
                                  dim=config.d_model),
        stack=build_stack(config, num_layers=config.num_layers,
                          max_length=num_patches + extra),
        num_classes=num_classes, dim=config.d_model, pooling=config.pooling,
        dropout=config.dropout)
