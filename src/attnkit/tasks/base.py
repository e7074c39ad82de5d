"""What a task is: real data split three ways, what the model must output, how to score it.

Every task module (one file per task) exposes a ``load_<name>(config) -> Task`` function registered
with :func:`register_task`. Data comes from installed packages only; a missing package raises
:class:`MissingDataError` whose message is the exact command that installs it.

Example shapes (``x`` is the model input of one example):
    image classification   x: (C, H, W) float,  y: () long
    audio classification   x: (T, F) float frames (MFCC / log-mel), y: () long
    token classification   x: (L,) long token ids, y: () long
    language modelling     x: (L,) long, y: (L,) long (next token)
    sequence to sequence   x: (Ls,) long source, y: (Lt,) long target = [bos, ..., eos]
                           (the model is fed y[:-1] and predicts y[1:]; greedy decoding starts
                           from ``bos_id`` and stops at ``eos_id``)

Variable-length examples are padded per batch by the training loop (``pad_id`` for token ids,
zeros for audio frames); padded target positions are ignored by the loss. A metric whose name
contains "loss", "perplexity" or "error" is minimized by early stopping, any other maximized.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch.utils.data import Dataset

__all__ = ["MissingDataError", "Task", "TaskKind", "get_task", "list_tasks", "register_task"]

TaskKind = Literal["classification", "language_model", "seq2seq"]
Modality = Literal["image", "audio", "tokens", "text"]


class MissingDataError(ImportError):
    """A task's data package is not installed; the message says how to install it."""


@dataclass
class Task:
    """A loaded task: datasets plus what a model needs to know about them."""

    name: str  # registry name, e.g. "digits"
    kind: TaskKind  # what is predicted
    modality: Modality  # what the input is
    train: Dataset[Any]  # yields (x, y) pairs
    val: Dataset[Any]
    test: Dataset[Any]
    num_classes: int | None = None  # classification: number of labels
    vocab_size: int | None = None  # token inputs / outputs: vocabulary size (pad id 0)
    target_vocab_size: int | None = None  # seq2seq: target vocabulary, if different
    input_shape: tuple[int, ...] = ()  # per-example input shape (variable dims as 0)
    metric: str = "accuracy"  # the validation metric early stopping watches
    pad_id: int = 0  # padding token id for token inputs
    decode: Callable[[list[int]], str] | None = None  # token ids -> text, for generation
    encode: Callable[[str], list[int]] | None = None  # text -> token ids
    bos_id: int | None = None  # token tasks: begin-of-sequence id (seq2seq targets start with it)
    eos_id: int | None = None  # token tasks: end-of-sequence id (greedy decoding stops there)
    evaluate: Callable[..., dict[str, float]] | None = None  # optional extra scores (e.g. BLEU):
    # evaluate(model, dataset, device) -> {"bleu": ...}; the model is in eval mode
    source: str = ""  # where the data comes from (package, path, licence)
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific details


_TASKS: dict[str, tuple[Callable[..., Task], str]] = {}


def register_task(name: str, summary: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    def wrap(loader: Callable[..., Task]) -> Callable[..., Task]:
        _TASKS[name] = (loader, summary)
        return loader

    return wrap


def list_tasks() -> dict[str, str]:
    import attnkit.tasks  # noqa: F401  (registers the built-in tasks)

    return {name: summary for name, (_, summary) in _TASKS.items()}


def get_task(name: str, **options: Any) -> Task:
    import attnkit.tasks  # noqa: F401

    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(_TASKS)}")
    loader = _TASKS[name][0]
    parameters = inspect.signature(loader).parameters
    valid = [p for p, spec in parameters.items() if spec.kind is not spec.VAR_KEYWORD]
    open_ended = len(valid) < len(parameters)  # the loader takes **options itself
    for key in options:
        if key not in valid and not open_ended:  # else a TypeError that reads like a bug
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"task {name!r} has no option {key!r}; {hint}options: "
                             f"{', '.join(valid) or 'none'}")
    return loader(**options)
