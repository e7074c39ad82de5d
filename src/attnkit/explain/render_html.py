"""One self-contained interactive HTML file: head view, model view, method switch.

Shape legend: H heads, Lq / Lk query / key lengths, k links kept per query row.

The page (``assets/viewer.html`` + ``viewer.js`` + ``viewer.css``, inlined) needs no network: the
data is embedded as JSON, maps as base64 typed arrays. Long inputs stay responsive because maps
above ``dense_limit`` entries are stored sparsely (the ``top_k`` largest weights of each query
row) and every drawing is on <canvas>: heatmaps through ImageData (max-pooled to the canvas
pixels), links only for the kept entries, and the model view from small pooled thumbnails.

    layers = [encode_layer(name="blocks.0.attn", maps=weights[0])]        # (H, Lq, Lk)
    write_html("report.html", title="...", labels={"input": tokens},
               methods={"raw": layers})
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["encode_attribution", "encode_image", "encode_layer", "html_report", "write_html"]

DENSE_LIMIT = 128 * 128  # maps with at most this many entries are stored whole
THUMBNAIL = 48  # model-view thumbnails are pooled to at most THUMBNAIL x THUMBNAIL


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _encode_map(matrix: Tensor, top_k: int, dense_limit: int) -> dict[str, Any]:
    m = matrix.detach().float().cpu()  # (Lq, Lk)
    lq, lk = m.shape
    entry: dict[str, Any] = {"lq": lq, "lk": lk, "vmax": float(m.max()) if m.numel() else 0.0,
                             "vmin": float(m.min()) if m.numel() else 0.0}
    if lq * lk <= dense_limit or top_k >= lk:
        entry.update(format="dense", values=_b64(m.numpy().astype("<f4")))
    else:
        values, indices = m.topk(top_k, dim=-1)  # (Lq, k)
        index_type = "<u2" if lk <= 65535 else "<i4"
        entry.update(format="topk", k=top_k, values=_b64(values.numpy().astype("<f4")),
                     indices=_b64(indices.numpy().astype(index_type)),
                     itype="u16" if index_type == "<u2" else "i32")
    th, tw = min(lq, THUMBNAIL), min(lk, THUMBNAIL)
    pooled = torch.nn.functional.adaptive_max_pool2d(m[None, None], (th, tw))[0, 0]
    span = max(entry["vmax"], 1e-12)
    entry.update(th=th, tw=tw, thumb=_b64((pooled.clamp(min=0) / span * 255).round()
                                          .to(torch.uint8).numpy()))
    return entry


def encode_layer(*, name: str, maps: Tensor, kind: Literal["self", "cross"] = "self",
                 query_labels: str = "input", key_labels: str = "input",
                 head_names: Sequence[str] | None = None, top_k: int = 8,
                 dense_limit: int = DENSE_LIMIT) -> dict[str, Any]:
    """One layer of one method for :func:`html_report`.

    Args:
        name: shown in the layer menu.
        maps: (H, Lq, Lk) one map per head (a fused method passes H = 1).
        kind: "cross" for encoder-decoder attention (queries and keys from different labels).
        query_labels / key_labels: keys of the ``labels`` given to :func:`html_report`.
        head_names: menu names of the heads (default "head 0", ...).
        top_k: links kept per query row for maps above ``dense_limit`` entries.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (heads, Lq, Lk), got shape {tuple(maps.shape)}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    names = list(head_names) if head_names is not None else [
        f"head {h}" for h in range(maps.shape[0])]
    if len(names) != maps.shape[0]:
        raise ValueError(f"{len(names)} head names for {maps.shape[0]} heads")
    return {"name": name, "kind": kind, "q": query_labels, "k": key_labels,
            "heads": [dict(_encode_map(m, top_k, dense_limit), name=n)
                      for m, n in zip(maps, names, strict=True)]}


def encode_attribution(*, method: str, values: Tensor, labels: str | None = "input",
                       on_image: bool = False, note: str = "") -> dict[str, Any]:
    """A per-input attribution vector (e.g. the class-token row of a relevance map).

    ``labels`` names the token labels it is over; ``on_image`` draws it on the report's image
    (values then cover the image's patch grid in row-major order).
    """
    flat = values.detach().float().cpu().flatten()
    return {"method": method, "values": [round(float(v), 6) for v in flat], "labels": labels,
            "image": on_image, "note": note}


def encode_image(image: Tensor, grid: tuple[int, int]) -> dict[str, Any]:
    """An input image (C, H, W) with C in {1, 3}, scaled to 0..255, and its patch grid."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (channels 1 or 3, H, W), got {tuple(image.shape)}")
    img = image.detach().float().cpu()
    low, high = float(img.min()), float(img.max())
    scaled = ((img - low) / max(high - low, 1e-12) * 255).round().to(torch.uint8)
    return {"channels": int(img.shape[0]), "height": int(img.shape[1]),
            "width": int(img.shape[2]), "pixels": _b64(scaled.permute(1, 2, 0).numpy()),
            "grid": [int(grid[0]), int(grid[1])]}


def _asset(name: str) -> str:
    return resources.files("attnkit.explain").joinpath("assets", name).read_text("utf-8")


def html_report(*, title: str, labels: Mapping[str, Sequence[str]],
                methods: Mapping[str, Sequence[dict[str, Any]]],
                attributions: Sequence[dict[str, Any]] = (), image: dict[str, Any] | None = None,
                notes: str = "", query: int | Mapping[str, int] = 0, text: str = "") -> str:
    """The page as a string (see :func:`write_html`).

    ``query`` is the query row selected when the page opens, per label set: a mapping such as
    ``{"input": 3, "target": -1}`` (a layer whose queries are the target tokens opens on the
    target row), or one row for every label set. Negative rows count from the end (-1: a
    language model's last position). ``text`` is the input text, shown whole in its own panel
    (the title should stay a short summary).
    """
    if not methods or any(not layers for layers in methods.values()):
        raise ValueError("html_report needs at least one method with at least one layer")
    for method, layers in methods.items():
        for layer in layers:
            for side in ("q", "k"):
                if layer[side] not in labels:
                    raise ValueError(f"method {method!r} layer {layer['name']!r} uses labels "
                                     f"{layer[side]!r}; given labels: {sorted(labels)}")
            for head in layer["heads"]:
                lengths = (len(labels[layer["q"]]), len(labels[layer["k"]]))
                if (head["lq"], head["lk"]) != lengths:
                    raise ValueError(f"layer {layer['name']!r} maps are {head['lq']}x"
                                     f"{head['lk']} but its labels have lengths {lengths}")
    rows = dict(query) if isinstance(query, Mapping) else {k: int(query) for k in labels}
    unknown = sorted(set(rows) - set(labels))
    if unknown:
        raise ValueError(f"query rows given for labels {unknown}; given labels: {sorted(labels)}")
    queries = {}
    for name, row in rows.items():
        count = len(labels[name])
        if not -count <= row < count:
            raise ValueError(f"query row {row} is outside the {count} {name!r} labels")
        queries[name] = row % count
    data = {"title": title, "notes": notes, "labels": {k: list(v) for k, v in labels.items()},
            "methods": [{"name": k, "layers": list(v)} for k, v in methods.items()],
            "attributions": list(attributions), "image": image, "queries": queries,
            "text": text}
    # "</" inside a <script> would end it; "<\/" is the same JSON string.
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    parts = {"__TITLE__": html.escape(title), "/*__CSS__*/": _asset("viewer.css"),
             "/*__JS__*/": _asset("viewer.js"), "__DATA__": payload}
    # One pass, so placeholder-like text inside the data or the script is never substituted.
    return re.sub("|".join(re.escape(k) for k in parts), lambda m: parts[m.group(0)],
                  _asset("viewer.html"))


def write_html(path: str | Path, **report: Any) -> Path:
    """Write :func:`html_report` (same keyword arguments) to ``path``; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html_report(**report), encoding="utf-8")
    return out
