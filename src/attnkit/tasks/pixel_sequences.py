"""Images read as sequences of pixel tokens, as in the image tasks of Long Range Arena (LRA).

LRA flattens a greyscale image row by row and gives the model one token per pixel, its 8-bit
intensity: no patches, no 2D prior, so a 28x28 image is a 784-token sequence whose class depends
on pixels hundreds of positions apart. Token id ``1 + intensity`` (0..255), id 0 is padding.

Inputs x: (H*W,) int64 token ids in 1..256; labels y: () int64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from attnkit.tasks.base import Task, register_task
from attnkit.tasks.splits import TensorPairDataset

__all__ = ["PIXEL_VOCAB_SIZE", "image_to_pixel_tokens", "load_fashion_mnist_pixels",
           "pixel_tokens_dataset"]

PIXEL_VOCAB_SIZE = 257  # padding + 256 intensities


def image_to_pixel_tokens(images: Tensor | np.ndarray) -> Tensor:
    """(N, [1,] H, W) images, uint8 0..255 or float in [0, 1] -> (N, H*W) int64 ids in 1..256.

    Equivalent to ``(round(255 * x) if float else x).flatten(1) + 1``.
    """
    x = torch.as_tensor(images)
    if x.is_floating_point():
        if float(x.min()) < 0.0 or float(x.max()) > 1.0:
            raise ValueError(f"float images must lie in [0, 1], got [{float(x.min()):.3g}, "
                             f"{float(x.max()):.3g}]; scale them (x / 255) first")
        x = (x * 255.0).round()
    elif x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    return x.reshape(x.shape[0], -1).long() + 1  # (N, H*W)


def pixel_tokens_dataset(images: TensorPairDataset) -> TensorPairDataset:
    """The same examples with each image replaced by its pixel-token sequence."""
    return TensorPairDataset(image_to_pixel_tokens(images.inputs), images.targets)


@register_task("fashion-mnist-pixels",
               "Fashion-MNIST as 784-token pixel sequences (LRA image style), 10 classes")
def load_fashion_mnist_pixels(*, pool: int = 1, **options: object) -> Task:
    """Fashion-MNIST (see :func:`attnkit.tasks.fashion_mnist.load_fashion_mnist`, whose options
    this takes, except augmentation) with every image a 784-long sequence of pixel tokens.

    Args:
        pool: average ``pool x pool`` pixel blocks first (a divisor of 28: 1, 2, 4, 7, 14), for
            shorter sequences in quick runs; 1 keeps LRA's full resolution.
    """
    from attnkit.tasks.fashion_mnist import load_fashion_mnist

    if pool < 1 or 28 % pool:
        raise ValueError(f"pool must divide 28 (1, 2, 4, 7, 14, 28), got {pool}")
    for name in ("augment_shift", "augment_flip"):
        if options.get(name):
            raise ValueError(f"fashion-mnist-pixels does not augment; drop {name}")
    images = load_fashion_mnist(**options)  # type: ignore[arg-type]
    splits = []
    for split in (images.train, images.val, images.test):
        assert isinstance(split, TensorPairDataset)  # no augmentation was asked for
        if pool > 1:
            split = TensorPairDataset(torch.nn.functional.avg_pool2d(split.inputs, pool),
                                      split.targets)
        splits.append(pixel_tokens_dataset(split))
    length = (28 // pool) ** 2
    return Task(name="fashion-mnist-pixels", kind="classification", modality="tokens",
                train=splits[0], val=splits[1], test=splits[2], num_classes=10,
                vocab_size=PIXEL_VOCAB_SIZE, input_shape=(length,), pad_id=0,
                source=images.source + "; flattened to pixel tokens",
                extra={**images.extra, "pool": pool, "max_length": length,
                       "max_input_length": length})
