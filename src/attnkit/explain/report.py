"""From a model and one input to everything the views show: per-layer maps of each method and
the attribution of the prediction to the inputs.

Shape legend: L positions seen by attention (tokens, patches or frames, plus a class token if the
model prepends one), Ls / Lt source / target positions, N real inputs (L minus the class token).

Streams: an encoder-only or decoder-only model has one stream, labelled ``"input"``. An
encoder-decoder model has the source stream ``"input"``, the target stream ``"target"`` and
cross-attention from target to input (see :func:`attnkit.explain.relevance.assign_streams`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.explain.capture import AttentionRecord, capture
from attnkit.explain.flow import MAX_FLOW_TOKENS, attention_flow
from attnkit.explain.gradients import input_x_gradient, target_scores
from attnkit.explain.relevance import assign_streams, gradient_relevance
from attnkit.explain.render_html import encode_attribution, encode_image, encode_layer
from attnkit.explain.rollout import attention_rollout

__all__ = ["METHODS", "ExplainInput", "build_report"]

#: Per-layer views the report can hold: raw weights, rollout so far, relevance so far.
METHODS = ("raw", "rollout", "relevance")

_LABELS = {"source": ("input", "input"), "target": ("target", "target"),
           "cross": ("target", "input")}


@dataclass
class ExplainInput:
    """One example, ready to explain."""

    inputs: tuple[Any, ...]  # the model's positional inputs, batch of one
    labels: dict[str, list[str]]  # "input" (and "target" for seq2seq): one label per position
    explained_row: int | None = 0  # row carrying the prediction (class token 0, LM -1);
    # None for mean-pooled models: the attribution is the mean over all rows
    first_input: int = 0  # first position that is a real input (1 after a class token)
    image: Tensor | None = None  # (C, H, W) for image models: attributions drawn on it
    grid: tuple[int, int] | None = None  # patch grid (rows, cols) of ``image``
    frame_labels: list[str] | None = None  # audio: one label per input frame (input × gradient)
    target: int | None = None  # class / token to explain (default: the prediction)
    title: str = "attention"  # a short summary: the page's title and heading
    notes: list[str] = field(default_factory=list)
    text: str = ""  # the input text, shown whole in the page's input panel


def _check_lengths(records: Sequence[AttentionRecord], kinds: Sequence[str],
                   labels: dict[str, list[str]]) -> None:
    for record, kind in zip(records, kinds, strict=True):
        q_key, k_key = _LABELS[kind]
        want = (len(labels.get(q_key, [])), len(labels.get(k_key, [])))
        got = (record.query_length, record.key_length)
        if want != got:
            raise ValueError(f"layer {record.name!r} attends over {got[0]}x{got[1]} positions "
                             f"but the labels give {want[0]}x{want[1]} ({q_key!r}, {k_key!r}); "
                             f"give one label per attention position (class token included)")


def _raw_layers(records: Sequence[AttentionRecord], kinds: Sequence[str],
                top_k: int) -> list[dict[str, Any]]:
    layers = []
    for record, kind in zip(records, kinds, strict=True):
        q_key, k_key = _LABELS[kind]
        layers.append(encode_layer(
            name=record.name, maps=record.dense_weights()[0], kind="cross" if record.cross
            else "self", query_labels=q_key, key_labels=k_key,
            head_names=[f"head {h}" for h in record.heads], top_k=top_k))
    return layers


def _rollout_layers(records: Sequence[AttentionRecord], kinds: Sequence[str], top_k: int
                    ) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """Cumulative rollout per self-attention stream; returns the layers and final maps."""
    layers: list[dict[str, Any]] = []
    finals: dict[str, Tensor] = {}
    for stream in ("source", "target"):
        chosen = [r for r, k in zip(records, kinds, strict=True) if k == stream]
        if not chosen:
            continue
        steps = attention_rollout([r.dense_weights() for r in chosen], cumulative=True)
        label = _LABELS[stream][0]
        for record, step in zip(chosen, steps, strict=True):
            layers.append(encode_layer(name=f"up to {record.name}", maps=step[:1],
                                       query_labels=label, key_labels=label,
                                       head_names=["rollout"], top_k=top_k))
        finals[stream] = steps[-1][0]
    return layers, finals


def build_report(model: nn.Module, example: ExplainInput, *,
                 methods: Sequence[str] = METHODS, top_k: int = 8,
                 flow_limit: int = MAX_FLOW_TOKENS) -> dict[str, Any]:
    """Keyword arguments for :func:`attnkit.explain.render_html.write_html`.

    ``methods`` picks the per-layer views (and their order in the menu); the attribution panel
    always shows rollout, gradient relevance and input × gradient (plus attention flow for
    single-stream inputs up to ``flow_limit`` positions).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    model.eval()
    with torch.no_grad(), capture(model) as cap:
        logits = model(*example.inputs)
    position = -1 if example.explained_row is None else example.explained_row
    _, predicted = target_scores(logits, example.target, position)
    records = cap.records
    kinds = assign_streams(records)
    _check_lengths(records, kinds, example.labels)
    seq2seq = "cross" in kinds
    views: dict[str, list[dict[str, Any]]] = {}
    roll_layers, roll_final = _rollout_layers(records, kinds, top_k)
    relevance = gradient_relevance(model, *example.inputs, target=example.target,
                                   position=position)
    for method in methods:
        if method == "raw":
            views["raw"] = _raw_layers(records, kinds, top_k)
        elif method == "rollout" and roll_layers:
            views["rollout"] = roll_layers
        elif method == "relevance":
            views["relevance"] = [
                encode_layer(name=f"after {r.name}", maps=hist[:1],
                             kind="cross" if kind == "cross" else "self",
                             query_labels=_LABELS[kind][0], key_labels=_LABELS[kind][1],
                             head_names=["relevance"], top_k=top_k)
                for r, (kind, hist) in zip(records, relevance.history, strict=True)]

    row, first = example.explained_row, example.first_input

    def pick(matrix: Tensor) -> Tensor:
        """The explained row of an (Lq, Lk) map, or the mean row for mean pooling."""
        return matrix.mean(0) if row is None else matrix[row]
    image_grid = example.image is not None and example.grid is not None
    attributions = []

    def attribution(name: str, values: Tensor, note: str, labels: str = "real") -> None:
        attributions.append(encode_attribution(method=name, values=values, labels=labels,
                                               on_image=image_grid and labels == "real",
                                               note=note))

    labels = dict(example.labels)
    labels["real"] = labels["input"][first:]
    if seq2seq:
        assert relevance.cross is not None
        attribution("gradient relevance (Chefer et al. 2021): source tokens",
                    pick(relevance.cross[0])[first:],
                    "decoder position's relevance over the source, through cross-attention")
        if relevance.target is not None:
            labels["target_seen"] = labels["target"]
            attribution("gradient relevance: earlier target tokens", pick(relevance.target[0]),
                        "", labels="target_seen")
    else:
        attribution("attention rollout (Abnar & Zuidema 2020)",
                    pick(roll_final["source"])[first:], "residual-aware product of the "
                    "head-averaged attention of every layer")
        attribution("gradient relevance (Chefer et al. 2021)", pick(relevance.source[0])[first:],
                    "gradient-weighted attention, positive part, propagated through layers")
        length = records[0].key_length
        if length <= flow_limit:
            maps = [r.dense_weights() for r, k in zip(records, kinds, strict=True)
                    if k == "source"]
            rows = list(range(length)) if row is None else [row % length]
            flow = attention_flow(maps, output_positions=rows, max_tokens=flow_limit)
            attribution("attention flow (max-flow)", flow[0].mean(0)[first:],
                        "bottleneck capacity of all paths from the prediction to each input")
    ixg = input_x_gradient(model, *example.inputs, target=predicted, position=position)[0]
    if example.image is not None and example.grid is not None:
        gh, gw = example.grid
        pooled = ixg.sum(0)  # (H, W) summed over channels
        ph, pw = pooled.shape[0] // gh, pooled.shape[1] // gw
        ixg = pooled.reshape(gh, ph, gw, pw).sum(dim=(1, 3)).flatten()
    elif ixg.dim() == 2:  # audio frames (T, F): one value per frame
        ixg = ixg.sum(-1)
    ixg_labels = "real"
    if example.frame_labels is not None:
        labels["frames"] = example.frame_labels
        ixg_labels = "frames"
    elif ixg.numel() != len(labels["real"]):
        labels["inputs"] = [str(i) for i in range(ixg.numel())]
        ixg_labels = "inputs"
    attribution("input × gradient (baseline)", ixg, "signed; negative values shown blank",
                labels=ixg_labels)
    where = "the mean of all rows" if row is None else f"row {row}"
    # The page opens each layer on the explained token of its query stream: the target row for
    # decoder and cross layers; for encoder layers of a seq2seq model, the source token most
    # relevant to the prediction (there is no explained row on the source side).
    queries = {"input": 0 if row is None else row}
    if seq2seq:
        assert relevance.cross is not None
        queries = {"target": -1 if row is None else row,
                   "input": first + int(pick(relevance.cross[0])[first:].argmax())}
    notes = [*example.notes, f"explained: class/token {int(predicted[0])} at {where}; "
             f"weights stored as {cap.storage}; top-{top_k} links per row kept above "
             f"128x128 entries"]
    return {"title": example.title, "labels": labels, "methods": views,
            "attributions": attributions,
            "image": encode_image(example.image, example.grid) if image_grid and
            example.image is not None and example.grid is not None else None,
            "notes": "\n".join(notes), "query": queries, "text": example.text}
