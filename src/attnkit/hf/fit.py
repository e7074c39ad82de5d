"""Fitting a loaded checkpoint to a task: its family, whether the task's inputs fit, its head.

Fine-tuning itself is :func:`attnkit.train.finetune.finetune`:

    result = attnkit.train.finetune.finetune("path/to/vit", task="digits",
                                             overrides=["train.epochs=3"])
    # result.run_dir/hf        the starting point (head resized to the task's classes)
    # result.run_dir/hf-best   the fine-tuned model, a folder transformers loads

The run is a normal attnkit run (``attnkit eval/explain/generate RUN_DIR`` work on it): its
``hf/`` folder fixes the architecture, the usual checkpoints hold the weights. The task's
inputs must fit the checkpoint: its token ids inside the vocabulary (text tasks use the task's
own tokenizer), its images of the checkpoint's channels and size.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from attnkit.models.classifier import ClassifierHead, TransformerClassifier
from attnkit.models.decoder import DecoderLM
from attnkit.models.vit import PatchEmbedding

__all__ = [
    "PREPROCESSING_FILES", "check_fits_task", "copy_preprocessing", "fit_head", "model_family",
]


def model_family(model: nn.Module) -> str:
    """attnkit's family name of a loaded checkpoint: decoder, vit or encoder."""
    if isinstance(model, DecoderLM):
        return "decoder"
    if isinstance(model, TransformerClassifier):
        return "vit" if isinstance(model.embed, PatchEmbedding) else "encoder"
    raise ValueError(f"{type(model).__name__} is not a model attnkit.hf.load returns")


def check_fits_task(model: nn.Module, task: Any) -> None:
    """Raise ValueError naming the mismatch when ``task``'s inputs cannot feed ``model``."""
    family = model_family(model)
    wanted = "language_model" if family == "decoder" else "classification"
    if task.kind != wanted:
        raise ValueError(f"a {family} checkpoint needs a {wanted} task; {task.name!r} is "
                         f"{task.kind}")
    if family == "vit":
        assert isinstance(model, TransformerClassifier) and isinstance(model.embed,
                                                                       PatchEmbedding)
        size = model.embed.image_size
        shape = (model.embed.proj.in_channels, *(size or ()))
        if tuple(task.input_shape or ()) != shape:
            raise ValueError(f"task {task.name!r} has images {tuple(task.input_shape or ())}; "
                             f"the checkpoint takes {shape} (channels, height, width)")
        return
    if task.modality == "image" or not task.vocab_size:
        raise ValueError(f"a {family} checkpoint takes token ids; task {task.name!r} gives "
                         f"{task.modality} inputs")
    vocab = (model.vocab_size if isinstance(model, DecoderLM)
             else model.embed.tokens.table.num_embeddings)  # type: ignore[union-attr]
    if task.vocab_size > vocab:
        raise ValueError(f"task {task.name!r} has {task.vocab_size} token ids; the checkpoint's "
                         f"vocabulary has {vocab}")


def fit_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give a classifier a freshly initialized output layer of ``num_classes`` when its head
    has another size (or none); the pooler, when present, is kept."""
    if not isinstance(model, TransformerClassifier):
        return model
    head = model.head
    width = model.cls_token.shape[-1] if model.cls_token is not None else None
    if isinstance(head, ClassifierHead):
        if head.classifier is None or head.classifier.out_features != num_classes:
            head.classifier = nn.Linear(head.pooler.out_features, num_classes)
    elif isinstance(head, nn.Linear):
        if head.out_features != num_classes:
            model.head = nn.Linear(head.in_features, num_classes)
    else:  # no head at all: the pooled state (B, D) feeds a new Linear
        d = width or int(next(model.stack.parameters()).shape[-1])
        model.head = nn.Linear(d, num_classes)
    return model


#: Files of a tokenizer or image processor that travel with the weights.
PREPROCESSING_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                       "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json",
                       "preprocessor_config.json", "spiece.model", "tokenizer.model")


def copy_preprocessing(source: Path, target: Path) -> None:
    for name in PREPROCESSING_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
