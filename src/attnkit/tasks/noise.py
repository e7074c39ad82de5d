"""Noise robustness: perturb a task's inputs at growing levels and record accuracy per level.

Perturbations (each ``perturb(x, level, generator) -> x'`` on one example, level 0 = identity):

* :func:`gaussian_noise` for images and audio features: adds ``level * N(0, 1)`` to every value,
  so ``level`` is the noise standard deviation in input units (images lie in [0, 1]; the audio
  features are standardized, so there it is in units of one feature standard deviation).
* :func:`token_replacement` for token ids: each non-padding token is, with probability ``level``,
  replaced by a different token drawn uniformly from the replaceable ids.

:func:`robustness_curve` is model-agnostic: it takes ``predict_fn(inputs, lengths) -> (B,)``
predicted labels, where ``inputs`` is a padded batch and ``lengths`` the (B,) real lengths (None
when all examples in the batch have one shape), the same batch form attnkit's training loop uses.
The same ``seed`` gives the same noise draws for every model, so curves of different attention
kinds are compared on identical perturbed inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from attnkit.tasks.base import Task
from attnkit.tasks.splits import pad_sequences

__all__ = ["Perturbation", "RobustnessCurve", "gaussian_noise", "perturbation_for",
           "robustness_curve", "task_robustness", "token_replacement"]


class Perturbation(Protocol):
    def __call__(self, x: Tensor, level: float, generator: torch.Generator) -> Tensor: ...


def _check_level(level: float, *, upper: float | None = None) -> None:
    if level < 0 or (upper is not None and level > upper):
        bound = f"[0, {upper}]" if upper is not None else ">= 0"
        raise ValueError(f"noise level must be {bound}, got {level}")


def gaussian_noise(x: Tensor, level: float, generator: torch.Generator) -> Tensor:
    """``x + level * N(0, 1)`` elementwise (float inputs of any shape); level 0 returns x."""
    _check_level(level)
    if not x.is_floating_point():
        raise ValueError(f"gaussian_noise needs float inputs, got {x.dtype}; use "
                         "token_replacement for token ids")
    if level == 0:
        return x
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x + level * noise.to(x.device)


def token_replacement(*, vocab_size: int, pad_id: int = 0, protected: Sequence[int] = (),
                      low: int = 0) -> Perturbation:
    """A perturbation that replaces each token with probability ``level`` (0..1).

    Positions holding ``pad_id`` or an id in ``protected`` (e.g. separators) are never touched;
    a replaced token is drawn uniformly from ids ``low..vocab_size-1`` other than the pad id, the
    protected ids and the token itself, so exactly the chosen positions change.
    """
    excluded = {pad_id, *protected}
    candidates = torch.tensor([i for i in range(low, vocab_size) if i not in excluded])
    if len(candidates) < 2:
        raise ValueError(f"token_replacement needs at least 2 replaceable ids, got "
                         f"{candidates.tolist()} (vocab_size={vocab_size}, low={low}, "
                         f"pad_id={pad_id}, protected={list(protected)})")

    def perturb(x: Tensor, level: float, generator: torch.Generator) -> Tensor:
        _check_level(level, upper=1.0)
        if x.is_floating_point():
            raise ValueError(f"token_replacement needs integer token ids, got {x.dtype}")
        if level == 0:
            return x
        replaceable = torch.isin(x, candidates.to(x.device))
        chosen = (torch.rand(x.shape, generator=generator) < level).to(x.device) & replaceable
        # Draw among the other len(candidates) - 1 ids: an offset 1..n-1 from the token's own
        # position in the candidate list, wrapped around, never lands on the token itself.
        position = torch.searchsorted(candidates.to(x.device), x.clamp(min=0))
        offset = torch.randint(1, len(candidates), x.shape, generator=generator).to(x.device)
        replacement = candidates.to(x.device)[(position + offset) % len(candidates)]
        return torch.where(chosen, replacement, x)

    return perturb


def perturbation_for(task: Task) -> Perturbation:
    """The noise that fits ``task``'s inputs: Gaussian for images/audio, replacement for tokens.

    Token replacement draws from all non-padding ids of ``task.vocab_size`` except the task's
    structural ids listed in ``task.extra["protected_ids"]`` (if any).
    """
    if task.modality in ("image", "audio"):
        return gaussian_noise
    if task.vocab_size is None:
        raise ValueError(f"task {task.name!r} has token inputs but no vocab_size")
    return token_replacement(vocab_size=task.vocab_size, pad_id=task.pad_id,
                             protected=task.extra.get("protected_ids", ()))


@dataclass
class RobustnessCurve:
    """Accuracy at each noise level (levels ascending as given)."""

    levels: list[float]  # noise levels evaluated
    accuracy: list[float]  # fraction of examples predicted correctly at each level
    num_examples: int  # examples evaluated per level
    seed: int  # noise seed (same seed = same noise draws)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"levels": self.levels, "accuracy": self.accuracy,
                "num_examples": self.num_examples, "seed": self.seed, **self.extra}


def _batch(items: list[Tensor], pad_value: float) -> tuple[Tensor, Tensor | None]:
    if all(t.shape == items[0].shape for t in items):
        return torch.stack(items), None
    return pad_sequences(items, pad_value)


@torch.no_grad()
def robustness_curve(predict_fn: Callable[[Tensor, Tensor | None], Tensor], task_split: Any,
                     levels: Sequence[float], seed: int = 0, *,
                     perturb: Perturbation = gaussian_noise, pad_id: int = 0,
                     batch_size: int = 256, max_examples: int | None = None) -> RobustnessCurve:
    """Accuracy of ``predict_fn`` on ``task_split`` as each example is perturbed at each level.

    Args:
        predict_fn: ``(inputs (B, ...), lengths (B,) or None) -> (B,) predicted labels``.
        task_split: a dataset of ``(x, label)`` pairs (e.g. ``task.test``).
        levels: noise levels, e.g. ``[0, 0.1, 0.2, 0.4]``.
        seed: noise seed; level ``i`` uses a generator seeded with ``(seed, i)``, so every model
            sees identical perturbed inputs.
        perturb: the per-example perturbation (see :func:`perturbation_for`).
        pad_id: padding value for token batches (float batches pad with 0).
        batch_size: examples per ``predict_fn`` call.
        max_examples: evaluate only the first this many examples.
    """
    if not levels:
        raise ValueError("levels is empty; pass the noise levels to evaluate, e.g. [0, 0.1, 0.2]")
    count = len(task_split) if max_examples is None else min(len(task_split), max_examples)
    if count == 0:
        raise ValueError("task_split holds no examples")
    accuracy = []
    for index, level in enumerate(levels):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        correct = 0
        for start in range(0, count, batch_size):
            pairs = [task_split[i] for i in range(start, min(start + batch_size, count))]
            xs = [perturb(torch.as_tensor(x), float(level), generator) for x, _ in pairs]
            labels = torch.stack([torch.as_tensor(y) for _, y in pairs])
            inputs, lengths = _batch(xs, 0.0 if xs[0].is_floating_point() else pad_id)
            predicted = torch.as_tensor(predict_fn(inputs, lengths)).reshape(-1).cpu()
            if predicted.shape != labels.shape:
                raise ValueError(f"predict_fn returned {tuple(predicted.shape)} predictions for "
                                 f"a batch of {len(labels)}; it must return one label each")
            correct += int((predicted == labels).sum())
        accuracy.append(correct / count)
    return RobustnessCurve(levels=[float(v) for v in levels], accuracy=accuracy,
                           num_examples=count, seed=seed)


def task_robustness(predict_fn: Callable[[Tensor, Tensor | None], Tensor], task: Task,
                    levels: Sequence[float], seed: int = 0, *, split: str = "test",
                    batch_size: int = 256, max_examples: int | None = None) -> RobustnessCurve:
    """:func:`robustness_curve` on one split of a classification ``task`` with its own noise."""
    if task.kind != "classification":
        raise ValueError(f"robustness curves score predicted labels; task {task.name!r} is "
                         f"{task.kind}, not classification")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    curve = robustness_curve(predict_fn, getattr(task, split), levels, seed,
                             perturb=perturbation_for(task), pad_id=task.pad_id,
                             batch_size=batch_size, max_examples=max_examples)
    curve.extra.update({"task": task.name, "split": split,
                        "noise": "gaussian" if task.modality in ("image", "audio")
                        else "token_replacement"})
    return curve
