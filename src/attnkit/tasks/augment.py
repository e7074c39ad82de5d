"""Training-time image augmentation that keeps runs reproducible.

Random draws come from torch's global RNG, which the training loop seeds and saves in its
checkpoints, so a seeded run sees the same augmented images every time and ``--resume``
continues with the images the uninterrupted run would have seen.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["AugmentedImages", "shift_image"]


def shift_image(image: Tensor, dy: int, dx: int) -> Tensor:
    """``image`` (C, H, W) moved by (dy, dx) whole pixels, the uncovered border filled with 0."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


class AugmentedImages(Dataset[tuple[Tensor, Tensor]]):
    """Images (N, C, H, W) with a random shift of up to ``max_shift`` pixels per axis and, with
    ``flip``, a horizontal mirror with probability 1/2; labels (N,) unchanged."""

    def __init__(self, images: Tensor, labels: Tensor, *, max_shift: int = 0,
                 flip: bool = False) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.max_shift, self.flip = max_shift, flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]  # (C, H, W)
        if self.max_shift > 0:
            dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
            image = shift_image(image, dy, dx)
        if self.flip and bool(torch.randint(0, 2, ())):
            image = image.flip(-1)
        return image, self.labels[index]
