"""Turn one example of a task into an :class:`~attnkit.explain.report.ExplainInput`.

Shape legend: C channels, H x W image, P patch side, T frames, F features, L tokens.

Which positions attention sees is read from the model itself (one captured layer), so a class
token, if any, is found without knowing the model family.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from attnkit.explain.capture import capture
from attnkit.explain.report import ExplainInput
from attnkit.models.decoder import DecoderLM

if TYPE_CHECKING:
    from attnkit.tasks.base import Task

__all__ = ["example_from_inputs", "example_from_task", "parse_input_spec"]


def parse_input_spec(spec: str) -> tuple[str, int]:
    """``"test:3"`` -> ("test", 3); the split is one of train / val / test."""
    split, _, index = spec.partition(":")
    if split not in ("train", "val", "test") or not index.lstrip("-").isdigit():
        raise ValueError(f"--input must look like test:3 (split train/val/test and an example "
                         f"index), got {spec!r}")
    return split, int(index)


def _token_label(task: Task, token: int, *, source: bool = False) -> str:
    # seq2seq tasks with two vocabularies decode the source with extra["source_decode"]
    decode = task.extra.get("source_decode", task.decode) if source else task.decode
    if decode is not None:
        text = decode([token])
        # whitespace tokens get visible stand-ins (a blank box says nothing)
        return text if text.strip() else (text.replace(" ", "␣").replace("\n", "⏎")
                                          .replace("\t", "⇥") or "∅")
    return str(token)


def _model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _attention_length(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[int, int | None]:
    """(positions the first layer attends over, key positions of the first cross layer)."""
    with torch.no_grad(), capture(model) as cap:
        model(*inputs)
    cross = cap.cross_attention()
    return cap.records[0].key_length, cross[0].key_length if cross else None


def example_from_task(model: nn.Module, task: Task, x: Any, y: Any = None, *,
                      title: str = "") -> ExplainInput:
    """One example ``(x, y)`` of ``task`` as model inputs with a label per attention position.

    The inputs are put where ``model`` runs (a run loaded with ``device="cuda"`` is explained on
    the GPU); labels and the image for the views stay on the CPU."""
    model.eval()
    name = title or f"{task.name}: {type(model).__name__}"
    if task.kind == "seq2seq":
        if y is None:
            raise ValueError("a seq2seq example needs its target (the decoder input)")
        source = torch.as_tensor(x)
        source = source[source != task.pad_id][None]
        target = torch.as_tensor(y)
        target = target[target != task.pad_id][:-1][None]  # teacher-forced decoder input
        device = _model_device(model)
        inputs: tuple[Any, ...] = (source.to(device), target.to(device))
        labels = {"input": [_token_label(task, int(t), source=True) for t in source[0]],
                  "target": [_token_label(task, int(t)) for t in target[0]]}
        return ExplainInput(inputs=inputs, labels=labels, explained_row=-1, title=name,
                            notes=["explains the decoder's prediction after the last target "
                                   "token shown"])
    data: Tensor = torch.as_tensor(x)
    if not data.is_floating_point():
        data = data[data != task.pad_id] if task.kind == "classification" else data
    inputs = (data[None].to(_model_device(model)),)  # labels below read the CPU copy
    length, _ = _attention_length(model, inputs)
    if task.kind == "language_model":
        labels = {"input": [_token_label(task, int(t)) for t in data]}
        return ExplainInput(inputs=inputs, labels=labels, explained_row=-1, title=name,
                            notes=["explains the next-token prediction after the last token"])
    image = grid = None
    if task.modality == "image":
        grid = _patch_grid(model, data, length)
        real = [f"patch {r},{c}" for r in range(grid[0]) for c in range(grid[1])]
        image = data
    elif task.modality == "audio":
        real = [f"frame {t}" for t in range(data.shape[0])]
    else:
        real = [_token_label(task, int(t)) for t in data]
    true = f", true class {int(y)}" if y is not None and torch.as_tensor(y).numel() == 1 else ""
    return _classifier_example(model, inputs, real, length, image=image, grid=grid,
                               title=name + true)


def _patch_grid(model: nn.Module, image: Tensor, length: int) -> tuple[int, int]:
    """Patch grid (rows, cols) of ``image`` (C, H, W) for a model attending over ``length``."""
    rows, cols = image.shape[-2:]
    patch = getattr(getattr(model, "embed", None), "patch_size", None)
    if isinstance(patch, int):  # attnkit's ViT says its patch size (mean or class pooling)
        side = patch
    else:
        patches = length - 1 if length > 1 else length
        side = round((rows * cols / patches) ** 0.5)
    return rows // side, cols // side


def _classifier_example(model: nn.Module, inputs: tuple[Any, ...], real: list[str], length: int,
                        *, image: Tensor | None, grid: tuple[int, int] | None, title: str,
                        target: int | None = None) -> ExplainInput:
    """A classifier's example: a prepended class token is found from the attention length; the
    prediction is read from the class token, the first token (BERT) or the mean of all rows."""
    first = length - len(real)
    if first not in (0, 1):
        raise ValueError(f"the model attends over {length} positions for {len(real)} inputs; "
                         f"expected the inputs plus at most one class token")
    labels = {"input": (["[CLS]"] if first else []) + real}
    reads_first = first == 1 or getattr(model, "pooling", None) == "first"
    return ExplainInput(inputs=inputs, labels=labels, explained_row=0 if reads_first else None,
                        first_input=first, image=image, grid=grid, title=title, target=target,
                        notes=[] if reads_first else ["mean-pooled model: attributions are "
                                                      "the mean over all query rows"])


def example_from_inputs(model: nn.Module, data: Tensor, *, labels: Sequence[str] | None = None,
                        title: str = "", target: int | None = None) -> ExplainInput:
    """One unbatched input of any attnkit model (no task needed): token ids (L,), an image
    (C, H, W) or audio frames (T, F). ``labels``: one per input position (default: the ids).
    The inputs are put where ``model`` runs."""
    model.eval()
    name = title or type(model).__name__
    inputs = (data[None].to(_model_device(model)),)  # labels below read the CPU copy
    if labels is not None and (data.dim() > 2 or len(labels) != data.shape[0]):
        raise ValueError(f"{len(labels)} labels for input {tuple(data.shape)}: give one label "
                         f"per token or frame (image patches are labelled by their grid)")
    if isinstance(model, DecoderLM):
        if data.is_floating_point() or data.dim() != 1:
            raise ValueError(f"a language model explains token ids (L,), got {data.dtype} "
                             f"{tuple(data.shape)}")
        real = list(labels) if labels is not None else [str(int(t)) for t in data]
        return ExplainInput(inputs=inputs, labels={"input": real}, explained_row=-1, title=name,
                            target=target,
                            notes=["explains the next-token prediction after the last token"])
    length, cross = _attention_length(model, inputs)
    if cross is not None:
        raise ValueError("encoder-decoder models are explained from a run: attnkit explain "
                         "RUN_DIR --text ...")
    image = grid = None
    if data.is_floating_point() and data.dim() == 3:
        grid = _patch_grid(model, data, length)
        real = [f"patch {r},{c}" for r in range(grid[0]) for c in range(grid[1])]
        image = data
    elif data.is_floating_point():
        real = list(labels) if labels is not None else [f"frame {t}" for t in
                                                         range(data.shape[0])]
    else:
        real = list(labels) if labels is not None else [str(int(t)) for t in data]
    return _classifier_example(model, inputs, real, length, image=image, grid=grid, title=name,
                               target=target)
