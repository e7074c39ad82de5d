"""One call from a model and an input to a report: ``explain(model, inputs) -> Report``.

    from attnkit.explain import explain
    report = explain(model, "the cat sat", tokenizer=tokenizer)   # text models
    report = explain(vit, image)                                  # image (C, H, W)
    report                      # in Jupyter: the interactive report inline (offline, no CDN)
    report.save("report.html")  # the same self-contained page as ``attnkit explain``

Works for attnkit's own models and for checkpoints loaded with :func:`attnkit.hf.load`:
language models (DecoderLM: the next-token prediction after the last token) and classifiers
over tokens or image patches (class token, first token or mean pooling).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.explain.examples import example_from_inputs
from attnkit.explain.render_html import html_report, write_html
from attnkit.explain.report import METHODS, ExplainInput, build_report

__all__ = ["Report", "explain", "token_labels", "tokenize"]


@dataclass
class Report:
    """An attention report: ``save(path)`` writes it, ``html()`` returns the page, and Jupyter
    shows it inline through ``_repr_html_`` (an isolated iframe holding the same offline page).
    """

    fields: dict[str, Any]  # keyword arguments of attnkit.explain.render_html.html_report
    example: ExplainInput | None = None  # the explained input (for PNG views: write_pngs)

    def html(self) -> str:
        return html_report(**self.fields)

    def save(self, path: str | Path) -> Path:
        return write_html(path, **self.fields)

    def _repr_html_(self) -> str:
        # An iframe keeps the viewer's script and styles apart from the notebook's own page.
        page = html.escape(self.html(), quote=True)
        return (f'<iframe srcdoc="{page}" style="width: 100%; height: 760px; border: 0" '
                f'sandbox="allow-scripts" title="{html.escape(self.fields["title"])}"></iframe>')


def _visible(text: str) -> str:
    """A token's text with its spaces shown (a blank box says nothing)."""
    shown = text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")
    return shown or "∅"


def token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """One readable label per id: each token decoded on its own (byte-level BPE's "Ġcat" reads
    "␣cat"; WordPiece keeps "##ing"), or the ids themselves without a tokenizer."""
    if tokenizer is None:
        return [str(int(i)) for i in ids]
    if hasattr(tokenizer, "decode"):
        return [_visible(str(tokenizer.decode([int(i)], skip_special_tokens=False)))
                for i in ids]
    raise TypeError(f"cannot decode ids with {type(tokenizer).__name__}; pass a transformers "
                    f"tokenizer or a tokenizers.Tokenizer")


def tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[str]]:
    """Token ids and their labels for ``text``, with a transformers tokenizer (called, returns
    ``input_ids``) or a ``tokenizers.Tokenizer`` (``encode(text).ids``)."""
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        ids = [int(i) for i in tokenizer(text)["input_ids"]]
    elif hasattr(tokenizer, "encode") and hasattr(tokenizer.encode(text), "ids"):
        ids = list(tokenizer.encode(text).ids)
    else:
        raise TypeError(f"cannot tokenize with {type(tokenizer).__name__}; pass a transformers "
                        f"tokenizer or a tokenizers.Tokenizer")
    return ids, token_labels(tokenizer, ids)


def explain(model: nn.Module, inputs: str | Tensor, *, tokenizer: Any = None,
            labels: Sequence[str] | None = None, target: int | None = None,
            method: str = "raw", top_k: int = 8, title: str | None = None) -> Report:
    """Explain one input: raw heads, rollout and relevance per layer, and the attribution of the
    prediction to the inputs (rollout, Chefer relevance, attention flow for short inputs,
    input x gradient).

    Args:
        model: an attnkit model (e.g. from :func:`attnkit.hf.load`).
        inputs: text (needs ``tokenizer``), token ids (L,) or (1, L), or an image (C, H, W) or
            (1, C, H, W) already resized and normalized for the model.
        tokenizer: turns text into ids and ids into labels.
        labels: one label per input position instead of the tokenizer's tokens.
        target: class or token to explain (default: the model's prediction).
        method: the per-layer view shown first (all stay selectable).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    if isinstance(inputs, str):
        if tokenizer is None:
            raise ValueError("text input needs a tokenizer (e.g. attnkit.hf.load_tokenizer(path))")
        ids, text_labels = tokenize(tokenizer, inputs)
        if not ids:
            raise ValueError(f"{inputs!r} tokenizes to no tokens")
        data = torch.tensor(ids)
        labels = labels or text_labels
        name = title or f"{type(model).__name__} · {inputs!r}"
    else:
        data = torch.as_tensor(inputs)
        if data.dim() in (2, 4) and data.shape[0] == 1:
            data = data[0]  # a batch of one
        if not data.is_floating_point() and labels is None:
            labels = token_labels(tokenizer, data.tolist())
        name = title or type(model).__name__
    example = example_from_inputs(model, data, labels=labels, title=name, target=target)
    order = [method, *[m for m in METHODS if m != method]]
    return Report(build_report(model, example, methods=order, top_k=top_k), example)
