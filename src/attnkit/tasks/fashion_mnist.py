"""Fashion-MNIST: 70,000 28×28 greyscale images of clothing in 10 classes (Xiao et al., 2017).

Read from the original IDX files that Debian's ``dataset-fashion-mnist`` package installs in
/usr/share/datasets/fashion-mnist (MIT licence). The official 60,000 / 10,000 train/test split is
kept; the validation set is carved out of the training images by a fixed seed.

Inputs x: (1, 28, 28) float32 in [0, 1]; labels y: () int64 in 0..9.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from attnkit.tasks.augment import AugmentedImages
from attnkit.tasks.base import MissingDataError, Task, register_task
from attnkit.tasks.idx import read_idx
from attnkit.tasks.sources import apt_install_command, require_dir
from attnkit.tasks.splits import TensorPairDataset, limit, split_indices

__all__ = ["CLASS_NAMES", "DEFAULT_DIR", "load_fashion_mnist"]

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
APT_PACKAGES = ("dataset-fashion-mnist",)
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _find(directory: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` inside ``directory`` (Debian ships the gzip files)."""
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise MissingDataError(f"task 'fashion-mnist': {directory} has no {stem}[.gz]; install it "
                           f"with: {apt_install_command(*APT_PACKAGES)}")


@functools.lru_cache(maxsize=4)
def _read_arrays(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8), remembered: decompressing takes seconds."""
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{prefix}: {images.shape[0]} images but {labels.shape[0]} labels")
    images.flags.writeable = labels.flags.writeable = False  # shared between calls
    return images, labels


def _read_split(directory: Path, prefix: str) -> TensorPairDataset:
    images, labels = _read_arrays(directory, prefix)
    x = torch.tensor(images, dtype=torch.float32).div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)
    y = torch.tensor(labels, dtype=torch.int64)  # (N,)
    return TensorPairDataset(x, y)


@register_task("fashion-mnist", "Fashion-MNIST 28x28 clothing images, 10 classes (Debian package)")
def load_fashion_mnist(*, data_dir: str | Path = DEFAULT_DIR, val_size: int = 5000, seed: int = 0,
                       max_examples: int | None = None, augment_shift: int = 0,
                       augment_flip: bool = False) -> Task:
    """Load Fashion-MNIST.

    Args:
        data_dir: directory holding the four IDX files (plain or ``.gz``).
        val_size: training images held out for validation (by a permutation seeded with ``seed``).
        seed: seed of the validation split and of the ``max_examples`` subsample.
        max_examples: keep at most this many examples in each split (a seeded subsample), for
            quick runs; None keeps all.
        augment_shift: shift training images by up to this many pixels per axis (0: none).
        augment_flip: mirror training images left-right with probability 1/2 (clothes are
            nearly symmetric). Validation and test images are never changed.
    """
    directory = require_dir(data_dir, task="fashion-mnist", apt_packages=APT_PACKAGES)
    directory = directory.resolve()
    full_train = _read_split(directory, "train")
    test = _read_split(directory, "t10k")
    if not 0 < val_size < len(full_train):
        raise ValueError(f"val_size must lie in 1..{len(full_train) - 1}, got {val_size}")
    val_idx, train_idx = split_indices(len(full_train), [val_size, len(full_train) - val_size],
                                       seed)
    plain_train = full_train.subset(limit(train_idx, max_examples, seed + 1))
    train: TensorPairDataset | AugmentedImages = plain_train
    if augment_shift > 0 or augment_flip:
        train = AugmentedImages(plain_train.inputs, plain_train.targets,
                                max_shift=augment_shift, flip=augment_flip)
    val = full_train.subset(limit(val_idx, max_examples, seed + 2))
    if max_examples is not None:
        test = test.subset(limit(np.arange(len(test)), max_examples, seed + 3))
    return Task(
        name="fashion-mnist", kind="classification", modality="image",
        train=train, val=val, test=test, num_classes=10, input_shape=(1, 28, 28),
        source=f"Debian package dataset-fashion-mnist ({directory}), original IDX files of "
               "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), MIT licence",
        extra={"class_names": CLASS_NAMES},
    )
