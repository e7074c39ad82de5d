"""Seeded, disjoint train/validation/test splits and the datasets tasks return.

Fixed-size examples live in :class:`TensorPairDataset` (two stacked tensors); variable-length ones
in :class:`SequencePairDataset` (lists of tensors, padded per batch by whoever batches them, e.g.
with :func:`pad_sequences`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "SequencePairDataset",
    "TensorPairDataset",
    "limit",
    "pad_sequences",
    "split_counts",
    "split_indices",
]


class TensorPairDataset(Dataset[tuple[Tensor, Tensor]]):
    """Examples stored as two stacked tensors: ``inputs[i], targets[i]`` is example ``i``.

    Attributes:
        inputs: (N, ...) model inputs.
        targets: (N, ...) labels or target sequences.
    """

    def __init__(self, inputs: Tensor, targets: Tensor) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"inputs hold {len(inputs)} examples but targets hold {len(targets)}")
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]

    def subset(self, indices: Tensor | np.ndarray | Sequence[int]) -> TensorPairDataset:
        """A new dataset holding the examples at ``indices`` (in that order)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return TensorPairDataset(self.inputs[idx], self.targets[idx])


class SequencePairDataset(Dataset[tuple[Tensor, Tensor]]):
    """Variable-length examples: ``inputs[i]`` is (L_i, ...), ``targets[i]`` a label or sequence."""

    def __init__(self, inputs: Sequence[Tensor], targets: Sequence[Tensor] | Tensor) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"inputs hold {len(inputs)} examples but targets hold {len(targets)}")
        self.inputs = list(inputs)
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]

    @property
    def lengths(self) -> Tensor:
        """(N,) length of each input."""
        return torch.tensor([len(x) for x in self.inputs], dtype=torch.long)


def pad_sequences(sequences: Sequence[Tensor], pad_value: float = 0) -> tuple[Tensor, Tensor]:
    """Stack (L_i, ...) tensors into (B, max L_i, ...) padded at the end, plus (B,) lengths."""
    if not sequences:
        raise ValueError("pad_sequences needs at least one sequence")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    first = sequences[0]
    out = first.new_full((len(sequences), int(lengths.max()), *first.shape[1:]), pad_value)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = seq
    return out, lengths


def split_counts(total: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Sizes (train, val, test) of ``total`` examples; val and test get at least one each."""
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no "
                         "training data; keep their sum below 1")
    if total < 3:
        raise ValueError(f"cannot split {total} examples three ways; need at least 3")
    n_val = max(1, round(total * val_fraction))
    n_test = max(1, round(total * test_fraction))
    return total - n_val - n_test, n_val, n_test


def split_indices(total: int, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Disjoint index arrays of the given sizes drawn by a seeded permutation of ``range(total)``.

    The same ``(total, seed)`` always gives the same permutation, so splits are reproducible and
    the first split of a smaller ``sizes`` is a prefix of the same order.
    """
    if any(size < 0 for size in sizes) or sum(sizes) > total:
        raise ValueError(f"split sizes {list(sizes)} do not fit in {total} examples")
    order = np.random.default_rng(seed).permutation(total)
    out, start = [], 0
    for size in sizes:
        out.append(np.sort(order[start:start + size]))
        start += size
    return out


def limit(indices: np.ndarray, max_examples: int | None, seed: int) -> np.ndarray:
    """At most ``max_examples`` of ``indices``, a seeded random choice (all when None)."""
    if max_examples is None or max_examples >= len(indices):
        return indices
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
    keep = np.random.default_rng(seed).choice(len(indices), size=max_examples, replace=False)
    return np.sort(indices[keep])
