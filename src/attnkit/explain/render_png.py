"""Static PNG views with matplotlib (figures drawn by the Agg canvas: no display, no pyplot
global state).

Shape legend: H heads, N layers, Lq / Lk query / key lengths, T audio frames, F features,
gh x gw patch grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["plot_audio_strip", "plot_head_heatmaps", "plot_image_overlay", "plot_layer_grid",
           "plot_token_highlight"]

MAX_TICK_LABELS = 40  # above this many tokens, axis labels would overlap: show indices only


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


def _label_axes(ax: Any, rows: Sequence[str] | None, cols: Sequence[str] | None) -> None:
    if rows is not None and len(rows) <= MAX_TICK_LABELS:
        ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
    if cols is not None and len(cols) <= MAX_TICK_LABELS:
        ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=7, rotation=90)


def plot_head_heatmaps(maps: Tensor, path: str | Path, *, query_labels: Sequence[str] | None = None,
                       key_labels: Sequence[str] | None = None, title: str = "",
                       columns: int = 4) -> Path:
    """One heatmap per head: maps (H, Lq, Lk), rows are queries, token labels on the axes."""
    if maps.dim() != 3:
        raise ValueError(f"maps must be (heads, Lq, Lk), got shape {tuple(maps.shape)}")
    heads = maps.shape[0]
    cols = min(columns, heads)
    rows = (heads + cols - 1) // cols
    side = 2.2 + 0.12 * min(maps.shape[-1], MAX_TICK_LABELS)
    fig = Figure(figsize=(side * cols, side * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= heads:
            ax.axis("off")
            continue
        image = ax.imshow(maps[h].detach().float().cpu().numpy(), cmap="Blues",
                          aspect="auto", interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
        _label_axes(ax, query_labels, key_labels)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_layer_grid(layers: Sequence[Tensor], path: str | Path, *,
                    layer_names: Sequence[str] | None = None, title: str = "") -> Path:
    """Layer x head grid of small heatmaps: ``layers`` is a list of (H, Lq, Lk) maps."""
    if not layers:
        raise ValueError("plot_layer_grid needs at least one layer")
    heads = max(int(m.shape[0]) for m in layers)
    fig = Figure(figsize=(1.6 * heads + 1, 1.6 * len(layers)))
    axes = fig.subplots(len(layers), heads, squeeze=False)
    for li, maps in enumerate(layers):
        for h in range(heads):
            ax = axes[li, h]
            ax.set_xticks([])
            ax.set_yticks([])
            if h < maps.shape[0]:
                ax.imshow(maps[h].detach().float().cpu().numpy(), cmap="Blues",
                          interpolation="nearest")
            else:
                ax.axis("off")
            if li == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if h == 0:
                name = layer_names[li] if layer_names is not None else f"layer {li}"
                ax.set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_image_overlay(image: Tensor, patch_scores: Tensor, path: str | Path, *,
                       title: str = "", alpha: float = 0.8) -> Path:
    """Image (C, H, W) beside itself overlaid with patch relevance (gh, gw) upsampled to H x W."""
    if image.dim() != 3 or patch_scores.dim() != 2:
        raise ValueError(f"need image (C, H, W) and patch scores (gh, gw), got "
                         f"{tuple(image.shape)} and {tuple(patch_scores.shape)}")
    img = image.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp(min=1e-12)
    shown = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
    heat = torch.nn.functional.interpolate(
        patch_scores.detach().float().cpu()[None, None], size=tuple(img.shape[1:]),
        mode="bilinear", align_corners=False)[0, 0]
    fig = Figure(figsize=(6, 3))
    axes = fig.subplots(1, 2)
    for ax in axes:
        ax.imshow(shown.numpy(), cmap="gray" if img.shape[0] == 1 else None)
        ax.axis("off")
    low, high = float(heat.min()), float(heat.max())
    strength = ((heat - low) / max(high - low, 1e-12)).numpy()  # 0..1
    rgba = matplotlib.colormaps["autumn_r"](strength)
    rgba[..., 3] = alpha * strength  # irrelevant patches stay see-through
    axes[1].imshow(rgba)
    axes[0].set_title("input", fontsize=9)
    axes[1].set_title(title or "relevance", fontsize=9)
    return _save(fig, path)


def plot_audio_strip(features: Tensor, frame_scores: Tensor, path: str | Path, *,
                     title: str = "") -> Path:
    """Features (T, F) as a spectrogram-like image above a frame-relevance strip (T,)."""
    if features.dim() != 2 or frame_scores.dim() != 1:
        raise ValueError(f"need features (T, F) and frame scores (T,), got "
                         f"{tuple(features.shape)} and {tuple(frame_scores.shape)}")
    fig = Figure(figsize=(7, 3.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.imshow(features.detach().float().cpu().T.numpy(), aspect="auto", origin="lower",
               cmap="magma")
    top.set_ylabel("feature")
    top.set_title(title or "frame relevance", fontsize=9)
    bottom.imshow(frame_scores.detach().float().cpu()[None].numpy(), aspect="auto",
                  cmap="Reds", extent=(-0.5, features.shape[0] - 0.5, 0, 1))
    bottom.set_yticks([])
    bottom.set_xlabel("frame")
    return _save(fig, path)


def plot_token_highlight(tokens: Sequence[str], scores: Tensor, path: str | Path, *,
                         title: str = "", per_line: int = 12) -> Path:
    """Tokens as text boxes coloured by score (negative scores shown blank)."""
    values = scores.detach().float().cpu().flatten()
    if len(tokens) != values.numel():
        raise ValueError(f"{len(tokens)} tokens but {values.numel()} scores")
    span = float(values.clamp(min=0).max()) or 1.0
    lines = (len(tokens) + per_line - 1) // per_line
    fig = Figure(figsize=(per_line * 0.9, 0.45 * lines + 0.5))
    ax = fig.subplots()
    ax.set_xlim(0, per_line)
    ax.set_ylim(lines, 0)
    ax.axis("off")
    cmap = matplotlib.colormaps["Reds"]
    for i, (token, value) in enumerate(zip(tokens, values.tolist(), strict=True)):
        shade = max(0.0, value) / span
        ax.text(i % per_line + 0.05, i // per_line + 0.5, str(token)[:12], fontsize=9,
                va="center", color="white" if shade > 0.6 else "black",
                bbox={"facecolor": cmap(shade), "edgecolor": "none", "pad": 2})
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
