"""Drawing generated examples into disjoint, seeded train/val/test splits.

Generated tasks (synthetic, ListOps) draw examples from a seeded ``numpy`` generator until they
have enough *distinct* inputs, so no test input was seen in training. When the input space is too
small for the requested split sizes, a ValueError says so instead of looping forever.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

from attnkit.tasks.splits import SequencePairDataset

__all__ = ["draw_distinct", "to_datasets"]

Example = TypeVar("Example")


def draw_distinct(sample: Callable[[np.random.Generator], Example | None],
                  key: Callable[[Example], tuple[int, ...]], sizes: Sequence[int], seed: int,
                  *, task: str) -> list[list[Example]]:
    """Split lists of examples whose ``key`` (the input) never repeats within or across splits.

    ``sample(rng)`` returns an example or None to reject a draw (e.g. out of the length range).
    """
    for name, size in zip(("train", "val", "test"), sizes, strict=False):
        if size < 1:
            raise ValueError(f"task {task!r}: num_{name} must be >= 1, got {size}")
    total = sum(sizes)
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    examples: list[Example] = []
    max_draws = 50 * total + 10_000
    draws = 0
    while len(examples) < total:
        if draws >= max_draws:
            raise ValueError(
                f"task {task!r}: found only {len(examples)} distinct examples in {draws} draws "
                f"but {total} were asked for; the settings allow too few distinct inputs (or "
                "reject most draws): widen the length/vocabulary range or ask for fewer examples")
        draws += 1
        example = sample(rng)
        if example is None:
            continue
        k = key(example)
        if k in seen:
            continue
        seen.add(k)
        examples.append(example)
    out, start = [], 0
    for size in sizes:
        out.append(examples[start:start + size])
        start += size
    return out


def to_datasets(splits: Sequence[Sequence[tuple[Sequence[int], Sequence[int] | int]]],
                ) -> list[SequencePairDataset]:
    """(input ids, target ids or label) lists -> one SequencePairDataset per split."""
    datasets = []
    for split in splits:
        xs = [torch.tensor(list(x), dtype=torch.long) for x, _ in split]
        ys = [torch.tensor(y, dtype=torch.long) for _, y in split]
        datasets.append(SequencePairDataset(xs, ys))
    return datasets
