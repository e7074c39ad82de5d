"""Reading a mask as "causal and/or key padding", for kinds that cannot take arbitrary masks.

Kernel-feature kinds (linear, performer), Linformer and Nyströmformer never form the
(Lq, Lk) score matrix, so an arbitrary mask cannot be applied. What they can honour is key
padding (drop keys) and, for some, causality (prefix sums). :func:`split_mask` reads the mask's
:meth:`~attnkit.functional.masks.Mask.structure` (``full()``, ``causal()`` and ``padding(...)``
joined with ``&`` qualify) and returns those two parts, or raises a ValueError naming the kind
and what it supports.

:func:`allowed_key_counts` counts the keys each query may attend to (scalable softmax needs
``log n``), analytically for causal / padding masks and in query chunks otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnkit.functional.masks import Mask

__all__ = ["MaskParts", "allowed_key_counts", "split_mask"]


@dataclass(frozen=True)
class MaskParts:
    """A mask reduced to the two things kernel-feature kinds understand."""

    causal: bool  # query i sees keys j <= i + (Lk - Lq) (bottom-right aligned)
    key_valid: Tensor | None  # (B, Lk) bool, True = real key; None = every key is real


def split_mask(mask: Mask | None, *, batch: int, lq: int, lk: int, device: torch.device,
               kind: str, allow_causal: bool = True) -> MaskParts:
    """Split ``mask`` into causal flag and key padding, or raise ValueError saying why not."""
    if mask is None:
        return MaskParts(False, None)
    mask.check_shape(batch, mask.num_heads or 1, lq, lk)
    shape = mask.structure(lq, lk)
    band = (shape.lo, shape.hi) if shape.kind in ("full", "band", "padding") else None
    # A band that excludes no key is no restriction; the causal one is (None, Lk - Lq).
    causal = band == (None, lk - lq)
    if band is None or not (band == (None, None) or causal):
        supported = "causal() and padding(...)" if allow_causal else "padding(...)"
        raise ValueError(f"attention kind {kind!r} supports only {supported} masks joined with "
                         f"&, got {mask!r}; it never forms the score matrix, so other masks "
                         f"cannot be applied (use kind 'mha' or 'local')")
    if causal and not allow_causal:
        raise ValueError(f"attention kind {kind!r} cannot be causal: it mixes all "
                         f"positions before attending (mask {mask!r}); use kind "
                         f"'linear', 'performer' or 'local' for causal models")
    key_valid = None
    if shape.key_valid is not None:
        key_valid = shape.key_valid.to(device).expand(batch, lk)  # (B, Lk)
    return MaskParts(causal, key_valid)


def allowed_key_counts(mask: Mask | None, *, batch: int, heads: int, lq: int, lk: int,
                       device: torch.device, chunk: int = 1024) -> Tensor:
    """Number of keys each query may attend to: float (B|1, H|1, Lq, 1).

    Analytic for None / causal / padding (and their ``&``); otherwise the dense mask is summed
    over chunks of ``chunk`` queries so no (Lq, Lk) tensor is held at once.
    """
    if mask is None:
        return torch.full((1, 1, lq, 1), float(lk), device=device)
    try:
        parts = split_mask(mask, batch=batch, lq=lq, lk=lk, device=device, kind="ssmax")
    except ValueError:
        parts = None
    if parts is not None:
        q = torch.arange(lq, device=device).view(1, 1, -1, 1)
        if parts.key_valid is None:
            limit = (q + (lk - lq) + 1).clamp(0, lk) if parts.causal else None
            counts = torch.full((1, 1, lq, 1), lk, device=device) if limit is None else limit
        elif parts.causal:
            prefix = parts.key_valid.long().cumsum(-1)  # (B, Lk): real keys among 0..j
            idx = (q.view(-1) + (lk - lq)).clamp(-1, lk - 1)
            counts = torch.where(idx >= 0, prefix[:, idx.clamp(min=0)], torch.zeros_like(idx))
            counts = counts.view(batch, 1, lq, 1)
        else:
            counts = parts.key_valid.sum(-1).view(batch, 1, 1, 1).expand(batch, 1, lq, 1)
        return counts.to(torch.get_default_dtype())
    keys = torch.arange(lk, device=device)
    chunks = [mask.tile(torch.arange(start, min(start + chunk, lq), device=device), keys, lq, lk)
              .sum(-1, keepdim=True) for start in range(0, lq, chunk)]
    return torch.cat(chunks, 2).to(torch.get_default_dtype())
