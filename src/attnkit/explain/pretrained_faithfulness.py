"""The faithfulness table (deletion / insertion AUC against a random order) of a checkpoint.

A ViT is scored over its image patches (blanked), a first-token text classifier (BERT) over its
tokens (turned into padding). Inputs come from a task's test split (true labels), or from image
files / lines of text run through the folder's own image processor / tokenizer; those have no
labels, so "accuracy" there is agreement with the model's prediction on the untouched input.
"""

from __future__ import annotations

import os
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from attnkit.explain.faithfulness import (
    evaluate_faithfulness,
    format_table,
    mask_tokens,
    sanity_table,
    token_explanations,
)
from attnkit.explain.one_call import tokenize
from attnkit.hf.fit import check_fits_task, model_family
from attnkit.hf.load import load
from attnkit.hf.preprocess import load_image, load_image_processor, load_tokenizer
from attnkit.models.classifier import TransformerClassifier
from attnkit.models.encoder import TokenInput
from attnkit.models.vit import PatchEmbedding

__all__ = ["faithfulness_markdown", "faithfulness_rows"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _images(folder: Path, source: Path, limit: int) -> Tensor:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)[:limit]
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(_IMAGE_SUFFIXES)}) in "
                                f"{str(folder)!r}")
    processor = load_image_processor(source)
    return torch.stack([load_image(p, processor) for p in files])


def _texts(file: Path, source: Path, pad_id: int, limit: int) -> Tensor:
    lines = [t.strip() for t in file.read_text().splitlines() if t.strip()][:limit]
    if not lines:
        raise ValueError(f"{str(file)!r} has no text lines")
    tokenizer = load_tokenizer(source)
    encoded = [tokenize(tokenizer, line)[0] for line in lines]
    longest = max(len(ids) for ids in encoded)
    return torch.tensor([ids + [pad_id] * (longest - len(ids)) for ids in encoded])


def _pad_id(model: nn.Module) -> int:
    embed = getattr(model, "embed", None)
    if not isinstance(embed, TokenInput):
        raise ValueError(f"{type(model).__name__} does not take token ids")
    return embed.pad_id


def faithfulness_rows(model: nn.Module, inputs: Tensor, labels: Tensor, *, steps: int = 16,
                      random_repeats: int = 5, sanity_examples: int = 32
                      ) -> tuple[str, dict[str, Any]]:
    """The markdown table of ``model`` on ``inputs`` (images (B, C, H, W) or ids (B, L)) and the
    cascading-randomization Spearman correlations (method -> steps)."""
    if not isinstance(model, TransformerClassifier) or model.pooling == "mean":
        raise ValueError("the faithfulness table needs a classifier that reads one token "
                         "(a ViT's class token or BERT's [CLS])")
    options: dict[str, Any]
    if inputs.is_floating_point():
        if not isinstance(model.embed, PatchEmbedding):
            raise ValueError("image inputs need a ViT (patch embedding)")
        side = model.embed.patch_size
        grid = (inputs.shape[-2] // side, inputs.shape[-1] // side)
        options = {"grid": grid, "background": float(inputs.amin())}
        sanity = sanity_table(model, inputs[:sanity_examples], grid=grid)
    else:
        methods = token_explanations()
        pad_id = _pad_id(model)
        options = {"methods": methods, "remove": mask_tokens(pad_id)}
        sanity = sanity_table(model, inputs[:sanity_examples], methods={
            k: v for k, v in methods.items() if "flow" not in k})
    rows = evaluate_faithfulness(model, inputs, labels, steps=steps,
                                 random_repeats=random_repeats, **options)
    return format_table(rows), sanity


def faithfulness_markdown(source: str | os.PathLike[str], *, task: str | None = None,
                          images: str | None = None, texts: str | None = None,
                          examples: int = 300, steps: int = 16,
                          device: str | torch.device = "cpu") -> str:
    """The faithfulness table of the checkpoint at ``source`` as markdown (see module doc).

    ``device``: where the model runs (a torch device or its name)."""
    source = Path(source)
    model = load(source).to(device)
    family = model_family(model)
    if sum(x is not None for x in (task, images, texts)) != 1:
        raise ValueError("give exactly one of --task NAME, --images DIR (ViT) or --texts FILE")
    if task is not None:
        from attnkit.tasks import get_task

        loaded = get_task(task)
        check_fits_task(model, loaded)
        count = min(examples, len(cast(Sized, loaded.test)))
        pairs = [loaded.test[i] for i in range(count)]
        if family == "vit":
            inputs = torch.stack([torch.as_tensor(x) for x, _ in pairs]).float()
        else:
            sequences = [torch.as_tensor(x) for x, _ in pairs]
            inputs = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True,
                                                     padding_value=loaded.pad_id)
        labels = torch.tensor([int(y) for _, y in pairs])
        where = f"task {loaded.name}, {count} test examples, true labels"
    else:
        if images is not None:
            inputs = _images(Path(images), source, examples)
        else:
            inputs = _texts(Path(texts or ""), source, _pad_id(model), examples)
        inputs = inputs.to(device)
        with torch.no_grad():
            labels = model(inputs).argmax(-1)
        where = (f"{inputs.shape[0]} inputs from {images or texts}; labels = the model's own "
                 f"predictions, so accuracy is agreement with them")
    table, sanity = faithfulness_rows(model, inputs.to(device), labels.to(device), steps=steps)
    blocks = [step.block for step in next(iter(sanity.values()))]
    lines = [f"checkpoint: {source} ({family}); {where}; {steps} perturbation steps", "", table,
             "", "cascading randomization (Spearman with the original map):", "",
             "| method | " + " | ".join(f"down to {b}" for b in blocks) + " |",
             "|---|" + "---:|" * len(blocks)]
    lines += [f"| {name} | " + " | ".join(f"{s.spearman:.2f}" for s in steps_) + " |"
              for name, steps_ in sanity.items()]
    return "\n".join(lines)
