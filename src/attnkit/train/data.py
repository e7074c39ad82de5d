"""Batches from a task's datasets: padding collate and a resumable, shardable epoch order.

Shape legend: B batch, L (padded) length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = ["Batch", "collate", "epoch_batches", "make_loader"]


@dataclass
class Batch:
    """A collated batch: ``inputs`` (B, ...), ``targets`` (B,) or (B, L), ``lengths`` (B,) real
    input lengths when inputs were padded (None when every example had the same shape)."""

    inputs: Tensor
    targets: Tensor
    lengths: Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        return Batch(self.inputs.to(device, non_blocking=True),
                     self.targets.to(device, non_blocking=True),
                     None if self.lengths is None else self.lengths.to(device))


def _pad_stack(items: list[Tensor], pad_value: float | int) -> tuple[Tensor, Tensor | None]:
    """Stack along a new batch dim, right-padding dim 0 when lengths differ."""
    if all(t.shape == items[0].shape for t in items):
        return torch.stack(items), None
    if any(t.dim() == 0 or t.shape[1:] != items[0].shape[1:] for t in items):
        raise ValueError(f"examples differ in more than their first dim: "
                         f"{sorted({tuple(t.shape) for t in items})}")
    lengths = torch.tensor([t.shape[0] for t in items])
    out = items[0].new_full((len(items), int(lengths.max()), *items[0].shape[1:]), pad_value)
    for i, t in enumerate(items):
        out[i, : t.shape[0]] = t
    return out, lengths


def collate(examples: list[tuple[Any, Any]], *, pad_id: int = 0) -> Batch:
    """(x, y) pairs -> :class:`Batch`. Token ids pad with ``pad_id``, float features with 0."""
    xs = [torch.as_tensor(x) for x, _ in examples]
    ys = [torch.as_tensor(y) for _, y in examples]
    x_pad = pad_id if not xs[0].is_floating_point() else 0.0
    inputs, lengths = _pad_stack(xs, x_pad)
    targets, _ = _pad_stack(ys, pad_id)
    return Batch(inputs, targets, lengths)


def epoch_batches(num_examples: int, *, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1, shuffle: bool = True) -> list[list[int]]:
    """This process's batches of example indices for ``epoch``: a pure function of its arguments,
    so a resumed run sees exactly the order the uninterrupted one saw.

    Under data parallelism the permutation is padded (repeating its start) to a multiple of
    ``world_size`` and dealt round-robin, so every process gets the same number of batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(num_examples, generator=generator).tolist()
    else:
        order = list(range(num_examples))
    if world_size > 1:
        total = -(-num_examples // world_size) * world_size
        order = (order + order[: total - num_examples])[rank::world_size]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def make_loader(dataset: Dataset[Any], batches: list[list[int]], *, pad_id: int = 0
                ) -> DataLoader[Any]:
    """A DataLoader over the given index batches (no worker processes: order stays exact)."""
    # Its own generator: creating a DataLoader iterator draws a seed, which must not move the
    # global RNG (dropout, augmentation) or a resumed run would drift from the original.
    return DataLoader(dataset, batch_sampler=batches,  # type: ignore[arg-type]
                      collate_fn=lambda ex: collate(ex, pad_id=pad_id),
                      generator=torch.Generator())


def iterate(dataset: Dataset[Any], *, batch_size: int, pad_id: int = 0) -> Iterator[Batch]:
    """Sequential batches over a whole dataset (evaluation)."""
    n = len(dataset)  # type: ignore[arg-type]
    yield from make_loader(dataset, epoch_batches(n, batch_size=batch_size, seed=0, epoch=0,
                                                  shuffle=False), pad_id=pad_id)
