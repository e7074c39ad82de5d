"""What a model is trained to do, by task kind: one loss function per kind, no task branches.

Each objective returns the training loss and summed statistics (``loss_sum``, ``correct``,
``count``) from which accuracy, mean loss and perplexity follow. ``count`` is examples for
classification and (non-pad) target tokens for language modelling and seq2seq.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.train.data import Batch

if TYPE_CHECKING:
    from attnkit.tasks.base import Task

__all__ = ["OBJECTIVES", "Stats", "metrics_from_stats", "objective_for"]

Stats = dict[str, Tensor]
Objective = Callable[[nn.Module, Batch, "Task", float], tuple[Tensor, Stats]]


def _token_loss(logits: Tensor, labels: Tensor, pad_id: int, smoothing: float
                ) -> tuple[Tensor, Stats]:
    """logits (B, L, V), labels (B, L); pad labels are ignored."""
    flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=pad_id,
                           label_smoothing=smoothing)
    with torch.no_grad():
        real = flat_labels != pad_id
        nll = F.cross_entropy(flat_logits, flat_labels, ignore_index=pad_id, reduction="sum")
        correct = ((flat_logits.argmax(-1) == flat_labels) & real).sum()
    return loss, {"loss_sum": nll, "correct": correct, "count": real.sum()}


def classification(model: nn.Module, batch: Batch, task: Task, smoothing: float
                   ) -> tuple[Tensor, Stats]:
    logits = model(batch.inputs, batch.lengths).float()  # (B, C)
    loss = F.cross_entropy(logits, batch.targets, label_smoothing=smoothing)
    with torch.no_grad():
        nll = F.cross_entropy(logits, batch.targets, reduction="sum")
        correct = (logits.argmax(-1) == batch.targets).sum()
    count = torch.tensor(batch.targets.shape[0], device=logits.device)
    return loss, {"loss_sum": nll, "correct": correct, "count": count}


def language_model(model: nn.Module, batch: Batch, task: Task, smoothing: float
                   ) -> tuple[Tensor, Stats]:
    logits = model(batch.inputs, batch.lengths)  # (B, L, V)
    return _token_loss(logits, batch.targets, task.pad_id, smoothing)


def seq2seq(model: nn.Module, batch: Batch, task: Task, smoothing: float
            ) -> tuple[Tensor, Stats]:
    target_in, labels = batch.targets[:, :-1], batch.targets[:, 1:]  # teacher forcing
    logits = model(batch.inputs, target_in, batch.lengths)  # (B, T, V)
    return _token_loss(logits, labels, task.pad_id, smoothing)


OBJECTIVES: dict[str, Objective] = {"classification": classification,
                                    "language_model": language_model, "seq2seq": seq2seq}


def objective_for(task: Task) -> Objective:
    if task.kind not in OBJECTIVES:
        raise ValueError(f"task {task.name!r} has kind {task.kind!r}; the training loop knows "
                         f"{sorted(OBJECTIVES)}")
    return OBJECTIVES[task.kind]


def metrics_from_stats(stats: dict[str, float], kind: str) -> dict[str, float]:
    """Mean loss (nats per example / token), accuracy, and perplexity for token tasks."""
    count = max(stats.get("count", 0.0), 1.0)
    out = {"loss": stats["loss_sum"] / count, "accuracy": stats["correct"] / count}
    if kind != "classification":
        out["perplexity"] = math.exp(min(out["loss"], 50.0))
        out["token_accuracy"] = out.pop("accuracy")
    return out
