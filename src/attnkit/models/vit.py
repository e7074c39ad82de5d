"""Vision Transformer (Dosovitskiy et al., 2021): images as sequences of patches.

Shape legend: B batch, C channels, H x W image, P patch side, N = (H/P)(W/P) patches, D width.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from attnkit.models.builders import build_stack
from attnkit.models.classifier import TransformerClassifier
from attnkit.models.config import ModelConfig
from attnkit.models.embeddings import build_positions

__all__ = ["ConvStem", "PatchEmbedding", "build_vit"]


def _check_images(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"images must be (batch, channels, height, width), got "
                         f"{tuple(x.shape)}")


class PatchEmbedding(nn.Module):
    """Cut (B, C, H, W) into P x P patches and project each linearly: (B, N, D).

    Equivalent plain math: ``x.unfold`` into patches, flatten each to C*P*P, multiply by W.
    A strided convolution computes exactly that. ``image_size`` (H, W), when given, is the one
    size the model's position table was built for; other sizes are refused with it named.
    """

    def __init__(self, *, channels: int, patch_size: int, dim: int,
                 image_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.image_size = image_size
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, None]:
        _check_images(x)
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"images are {tuple(x.shape[-2:])} but this ViT was built for "
                             f"{self.image_size}; resize them (the image processor does)")
        p = self.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"image {tuple(x.shape[-2:])} is not divisible into {p}x{p} "
                             f"patches; choose model.patch_size dividing both sides")
        return self.proj(x).flatten(2).transpose(1, 2), None  # (B, N, D); all patches real


class ConvStem(nn.Module):
    """A convolutional stem in place of the patch projection (Xiao et al., 2021, "Early
    Convolutions Help Transformers See Better"): ``n = ceil(log2 P)`` 3x3 convolutions of stride
    2 (widths D/2^(n-1) ... D, GELU between) and a 1x1 projection, so each token sees an
    overlapping neighbourhood instead of one isolated patch. (B, C, H, W) -> (B, N, D) with
    N = ceil(H / 2^n) * ceil(W / 2^n), the patch grid of P = 2^n.
    """

    def __init__(self, *, channels: int, patch_size: int, dim: int) -> None:
        super().__init__()
        self.steps = max(1, math.ceil(math.log2(patch_size)))
        layers: list[nn.Module] = []
        width_in = channels
        for i in range(self.steps):
            width = max(8, dim >> (self.steps - 1 - i))
            layers += [nn.Conv2d(width_in, width, kernel_size=3, stride=2, padding=1), nn.GELU()]
            width_in = width
        layers.append(nn.Conv2d(width_in, dim, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid for an image of height x width."""
        step = 2 ** self.steps
        return -(-height // step), -(-width // step)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, None]:
        _check_images(x)
        return self.net(x).flatten(2).transpose(1, 2), None  # (B, N, D)


def build_vit(config: ModelConfig, *, image_shape: tuple[int, ...], num_classes: int
              ) -> TransformerClassifier:
    """ViT for images of ``image_shape`` = (C, H, W); class token or mean pooling."""
    if len(image_shape) != 3:
        raise ValueError(f"ViT needs (channels, height, width) inputs, got shape {image_shape}")
    channels, height, width = image_shape
    p = config.patch_size
    embed: PatchEmbedding | ConvStem
    if config.patch_stem == "conv":
        if p < 2:
            raise ValueError(f"patch_stem='conv' needs patch_size >= 2, got {p}")
        embed = ConvStem(channels=channels, patch_size=p, dim=config.d_model)
        rows, cols = embed.grid(height, width)
        num_patches = rows * cols
    elif config.patch_stem == "linear":
        if p < 1 or height % p or width % p:
            raise ValueError(f"patch_size={p} must divide the image size {height}x{width}")
        embed = PatchEmbedding(channels=channels, patch_size=p, dim=config.d_model,
                               image_size=(height, width))
        num_patches = (height // p) * (width // p)
    else:
        raise ValueError(f"model.patch_stem must be 'linear' or 'conv', got "
                         f"{config.patch_stem!r}")
    extra = 1 if config.pooling == "cls" else 0
    return TransformerClassifier(
        embed=embed,
        positions=build_positions(config.positional, max_length=num_patches + extra,
                                  dim=config.d_model),
        stack=build_stack(config, num_layers=config.num_layers,
                          max_length=num_patches + extra),
        num_classes=num_classes, dim=config.d_model, pooling=config.pooling,
        dropout=config.dropout)
