"""Model families and the one entry point ``build_model(config, task)``.

A family builder reads what it needs from the task (classes, vocabulary, input shape) and the
numbers from the config. Which family a task gets by default follows its kind and modality.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from torch import nn

from attnkit.models.audio import build_audio_transformer
from attnkit.models.config import ModelConfig
from attnkit.models.decoder import build_decoder_lm
from attnkit.models.encoder import build_encoder_classifier
from attnkit.models.seq2seq import build_seq2seq
from attnkit.models.vit import build_vit

if TYPE_CHECKING:
    from attnkit.tasks.base import Task

__all__ = ["FAMILIES", "build_model", "default_family"]


def _fit_length(config: ModelConfig, task: Task) -> ModelConfig:
    """Make the position table cover the task's sequences: a fixed input length
    (``input_shape[0]``) or the hint ``task.extra["max_length"]``, if longer than the config's."""
    longest = max(task.input_shape[0] if task.input_shape and task.modality != "image" else 0,
                  int(task.extra.get("max_length", 0)))
    return replace(config, max_length=longest) if longest > config.max_length else config


def _need(value: int | None, what: str, task: Task) -> int:
    if value is None:
        raise ValueError(f"task {task.name!r} does not set {what}, which this model family needs")
    return value


def _check_kind(task: Task, kind: str, family: str) -> None:
    if task.kind != kind:
        raise ValueError(f"model family {family!r} does not fit task {task.name!r} "
                         f"(kind {task.kind!r}); use one for {task.kind!r}: "
                         f"{[f for f, (k, _) in FAMILIES.items() if k == task.kind]}")


def _vit(config: ModelConfig, task: Task) -> nn.Module:
    _check_kind(task, "classification", "vit")
    return build_vit(config, image_shape=task.input_shape,
                     num_classes=_need(task.num_classes, "num_classes", task))


def _encoder(config: ModelConfig, task: Task) -> nn.Module:
    _check_kind(task, "classification", "encoder")
    return build_encoder_classifier(config, vocab_size=_need(task.vocab_size, "vocab_size", task),
                                    num_classes=_need(task.num_classes, "num_classes", task),
                                    pad_id=task.pad_id)


def _audio(config: ModelConfig, task: Task) -> nn.Module:
    _check_kind(task, "classification", "audio")
    if not task.input_shape:
        raise ValueError(f"task {task.name!r} must give input_shape (frames, features)")
    return build_audio_transformer(config, features=task.input_shape[-1],
                                   num_classes=_need(task.num_classes, "num_classes", task))


def _decoder(config: ModelConfig, task: Task) -> nn.Module:
    _check_kind(task, "language_model", "decoder")
    return build_decoder_lm(config, vocab_size=_need(task.vocab_size, "vocab_size", task))


def _seq2seq(config: ModelConfig, task: Task) -> nn.Module:
    _check_kind(task, "seq2seq", "seq2seq")
    source = _need(task.vocab_size, "vocab_size", task)
    return build_seq2seq(config, source_vocab_size=source,
                         target_vocab_size=task.target_vocab_size or source, pad_id=task.pad_id)


#: family name -> (task kind it serves, builder)
FAMILIES: dict[str, tuple[str, Callable[[ModelConfig, Task], nn.Module]]] = {
    "vit": ("classification", _vit),
    "encoder": ("classification", _encoder),
    "audio": ("classification", _audio),
    "decoder": ("language_model", _decoder),
    "seq2seq": ("seq2seq", _seq2seq),
}

_CLASSIFIER_BY_MODALITY = {"image": "vit", "audio": "audio", "tokens": "encoder",
                           "text": "encoder"}
_FAMILY_BY_KIND = {"language_model": "decoder", "seq2seq": "seq2seq"}


def default_family(task: Task) -> str:
    """The family a task gets when none is named."""
    if task.kind == "classification":
        return _CLASSIFIER_BY_MODALITY[task.modality]
    return _FAMILY_BY_KIND[task.kind]


def build_model(config: ModelConfig, task: Task) -> nn.Module:
    """The model of ``config.family`` (or the task's default family) for ``task``."""
    family = config.family or default_family(task)
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[family][1](_fit_length(config, task), task)
