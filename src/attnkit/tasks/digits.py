"""``digits``: scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes).

The data ships inside scikit-learn (``sklearn.datasets.load_digits``), so nothing is downloaded.
Pixels (0..16) are scaled to [0, 1]; images are (1, 8, 8) float tensors. The split is a fixed
random permutation (seed ``split_seed``): 20% test, 10% validation, the rest training.
Source: UCI "Optical Recognition of Handwritten Digits" (Alpaydin & Kaynak, 1998), CC BY 4.0.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from attnkit.tasks.augment import AugmentedImages
from attnkit.tasks.base import MissingDataError, Task, register_task

__all__ = ["TUNED_TRAINING", "load_digits_task"]

#: Training settings tuned with the ``vit_tiny_digits`` preset: >= 97% test accuracy in about a
#: minute on one CPU core. One thread: this model's matmuls are too small to gain from two.
#: Keys the user sets (config file, --set) win over these.
TUNED_TRAINING = {"epochs": 40, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.05,
                  "label_smoothing": 0.1, "warmup_fraction": 0.05, "num_threads": 1}


@register_task("digits", "scikit-learn 8x8 handwritten digits, 10 classes (ships with sklearn)")
def load_digits_task(*, split_seed: int = 0, test_fraction: float = 0.2,
                     val_fraction: float = 0.1, augment_shift: int = 0) -> Task:
    """Load the digits task; ``split_seed`` fixes which images land in which split.

    ``augment_shift``: training images are shifted by up to this many pixels (default 0: no
    augmentation; 1 regularizes but needs about twice the epochs); validation and test images
    are never changed.
    """
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(f"need 0 < test_fraction, val_fraction and their sum < 1, got "
                         f"test_fraction={test_fraction}, val_fraction={val_fraction}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise MissingDataError("the digits task needs scikit-learn: "
                               "pip install scikit-learn") from err
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(data.target, dtype=torch.long)  # (N,)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    n_test = round(len(labels) * test_fraction)
    n_val = round(len(labels) * val_fraction)
    test_idx, val_idx = order[:n_test], order[n_test:n_test + n_val]
    train_idx = order[n_test + n_val:]

    def subset(idx: torch.Tensor) -> TensorDataset:
        return TensorDataset(images[idx], labels[idx])

    return Task(name="digits", kind="classification", modality="image",
                train=(AugmentedImages(images[train_idx], labels[train_idx],
                                       max_shift=augment_shift)
                       if augment_shift > 0 else subset(train_idx)),
                val=subset(val_idx), test=subset(test_idx),
                num_classes=10, input_shape=(1, 8, 8), metric="accuracy",
                # The tuned defaults of `attnkit train --task digits` and `attnkit demo`.
                extra={"presets": {"vit": "vit_tiny_digits"}, "train": dict(TUNED_TRAINING)},
                source="scikit-learn sklearn.datasets.load_digits (UCI optdigits test set, "
                       "CC BY 4.0)")
