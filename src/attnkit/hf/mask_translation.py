"""Hugging Face mask descriptions -> attnkit masks, keeping the structure (no L x L tensor).

Shape legend: B batch, Lq query length, Lk key length (cache included).

Transformers builds every attention mask from two things: a *mask function*
``f(batch_idx, head_idx, q_idx, kv_idx) -> bool`` composed from a few known pieces
(``causal_mask_function``, ``sliding_window_overlay(w)``, ``and_masks(...)``, a 2-D padding mask,
packed-sequence ids), and the absolute positions of the first query and key (``q_offset``,
``kv_offset``). Its ``sdpa`` / ``eager`` mask interfaces evaluate that function on an
``Lq x Lk`` grid. Registered as the mask interface of the ``"attnkit"`` implementation,
:func:`translate_mask` reads the pieces instead and returns the matching attnkit mask::

    causal_mask_function                     -> masks.causal(offset)
    bidirectional_mask_function              -> masks.full()
    and(sliding_window_overlay(w), causal)   -> masks.sliding_window(w - 1, offset=offset)
    sliding_window_bidirectional_overlay(w)  -> masks.sliding_window(w, w, offset=offset)
    padding_mask_function / 2-D mask (B, Lk) -> masks.padding(key_valid)
    packed sequences (from position_ids)     -> masks.document(ids) & the pattern above
    and_masks / or_masks                     -> & / |

where ``offset = q_offset - kv_offset`` (query ``i`` sits at key position ``i + offset``). Only a
piece it does not know (chunked attention, image-token overlays, user functions) makes it fall
back to evaluating the function densely (``masks.dense``), exactly as ``sdpa`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from attnkit.functional import masks
from attnkit.functional.masks import Mask
from attnkit.hf.dependency import import_transformers

__all__ = ["MaskLayout", "translate_mask", "translate_mask_function"]

MaskFunction = Callable[..., Any]


@dataclass(frozen=True)
class MaskLayout:
    """Where the queries and keys of one attention call sit (absolute positions)."""

    batch: int  # B
    q_length: int  # Lq
    kv_length: int  # Lk
    q_offset: int  # absolute position of query 0
    kv_offset: int  # absolute position of key 0

    @property
    def offset(self) -> int:
        """Query ``i`` sits at key index ``i + offset`` (attnkit's mask ``offset``)."""
        return self.q_offset - self.kv_offset


def _cells(fn: MaskFunction) -> dict[str, Any]:
    """The variables a closure captured, by name (its free variables)."""
    closure = getattr(fn, "__closure__", None) or ()
    return dict(zip(fn.__code__.co_freevars, (cell.cell_contents for cell in closure)))


def _code_of(factory: Callable[..., MaskFunction] | None, *args: Any) -> Any:
    """The code object of the closures ``factory`` makes (None if transformers lacks it)."""
    return None if factory is None else factory(*args).__code__


class _Pieces:
    """The code objects of transformers' mask-function factories, to recognise their closures."""

    def __init__(self) -> None:
        mu = import_transformers().masking_utils
        probe_ids = torch.zeros(1, 1, dtype=torch.long)
        self.causal = mu.causal_mask_function
        self.bidirectional = mu.bidirectional_mask_function
        self.and_code = mu.and_masks(self.causal).__code__
        self.or_code = mu.or_masks(self.causal).__code__
        self.sliding_code = mu.sliding_window_overlay(1).__code__
        self.padding_code = mu.padding_mask_function(probe_ids.bool()).__code__
        # Newer pieces: on a transformers without them the patterns fall back to dense masks.
        self.sliding_bidirectional_code = _code_of(
            getattr(mu, "sliding_window_bidirectional_overlay", None), 1)
        self.packed_code = _code_of(getattr(mu, "packed_sequence_mask_function", None),
                                    probe_ids)
        self.remap_code = _code_of(getattr(mu, "remap_positions_for_packed_sequence", None),
                                   self.causal, probe_ids)

    def kind(self, fn: MaskFunction) -> str:
        if fn is self.causal:
            return "causal"
        if fn is self.bidirectional:
            return "bidirectional"
        code = getattr(fn, "__code__", None)
        if code is None:
            return "unknown"
        for name in ("and", "or", "sliding", "sliding_bidirectional", "padding", "packed",
                     "remap"):
            if code is getattr(self, f"{name}_code"):
                return name
        return "unknown"


@lru_cache(maxsize=1)
def _known_pieces() -> _Pieces:
    return _Pieces()


def _key_valid(padding: Tensor, layout: MaskLayout) -> Tensor:
    """The 2-D padding mask (B, >= kv_offset + Lk) cut to this call's keys: (B, Lk) bool."""
    stop = layout.kv_offset + layout.kv_length
    if padding.shape[-1] < stop:  # transformers pads short masks with "not a key"
        padding = torch.nn.functional.pad(padding, (0, stop - padding.shape[-1]))
    return padding[:, layout.kv_offset:stop].bool()


def _padding_mask(padding: Tensor, layout: MaskLayout) -> Mask | None:
    """``masks.padding`` for these keys, or None when every key is real."""
    valid = _key_valid(padding, layout)
    if bool(valid.all()):
        return None
    lengths = valid.sum(-1)
    positions = torch.arange(valid.shape[-1], device=valid.device)
    if torch.equal(valid, positions < lengths[:, None]):  # right padding: lengths suffice
        return masks.padding(lengths)
    return masks.padding(valid)


def _intersect(parts: list[Mask]) -> Mask:
    result = parts[0]
    for part in parts[1:]:
        result = result & part
    return result


def _translate_and(functions: tuple[MaskFunction, ...], layout: MaskLayout,
                   pieces: _Pieces) -> Mask | None:
    kinds = [pieces.kind(f) for f in functions]
    windows = [_cells(f)["sliding_window"] for f, k in zip(functions, kinds) if k == "sliding"]
    parts: list[Mask] = []
    if "causal" in kinds and len(windows) == 1:
        # The sliding-window causal pattern: one band, so backends keep their band fast path.
        parts.append(masks.sliding_window(int(windows[0]) - 1, offset=layout.offset))
        functions = tuple(f for f, k in zip(functions, kinds) if k not in ("causal", "sliding"))
        kinds = [pieces.kind(f) for f in functions]
    packed = [f for f, k in zip(functions, kinds) if k == "packed"]
    for fn, kind in zip(functions, kinds):
        if kind == "remap":
            # remap(f, position_ids) evaluates f on positions inside each packed sequence. They
            # step by one inside a sequence, so a translation-invariant f (causal, window) is
            # f itself once the packed-sequence part keeps attention inside the sequence.
            inner = translate_mask_function(_cells(fn)["mask_function"], layout, pieces)
            if inner is None or not packed or inner.band(layout.q_length, layout.kv_length) is None:
                return None
            parts.append(inner)
        else:
            part = translate_mask_function(fn, layout, pieces)
            if part is None:
                return None
            parts.append(part)
    return _intersect(parts) if parts else masks.full()


def translate_mask_function(fn: MaskFunction, layout: MaskLayout,
                            pieces: _Pieces | None = None) -> Mask | None:
    """The attnkit mask equal to transformers mask function ``fn``, or None if it is unknown."""
    pieces = pieces or _known_pieces()
    kind = pieces.kind(fn)
    if kind == "causal":
        return masks.causal(offset=layout.offset)
    if kind == "bidirectional":
        return masks.full()
    if kind == "sliding":  # alone (no causal part): keys j >= i + offset - (w - 1)
        return ~masks.causal(offset=layout.offset - int(_cells(fn)["sliding_window"]))
    if kind == "sliding_bidirectional":
        window = int(_cells(fn)["sliding_window"])
        return masks.sliding_window(window, window, offset=layout.offset)
    if kind == "padding":
        found = _padding_mask(_cells(fn)["padding_mask"], layout)
        return masks.full() if found is None else found
    if kind == "packed":
        ids = _cells(fn)["packed_sequence_mask"]
        if layout.q_offset or layout.kv_offset or layout.q_length != layout.kv_length:
            return None
        return masks.document(ids)
    if kind == "and":
        return _translate_and(tuple(_cells(fn)["mask_functions"]), layout, pieces)
    if kind == "or":
        alternatives: list[Mask] = []
        for inner in _cells(fn)["mask_functions"]:
            part = translate_mask_function(inner, layout, pieces)
            if part is None:
                return None
            alternatives.append(part)
        union = alternatives[0]
        for part in alternatives[1:]:
            union = union | part
        return union
    return None


def _as_int(value: int | Tensor) -> int:
    return int(value.item()) if isinstance(value, Tensor) else int(value)


def translate_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int | Tensor = 0,
                   kv_offset: int | Tensor = 0, mask_function: MaskFunction | None = None,
                   attention_mask: Tensor | None = None, **kwargs: Any) -> Mask:
    """transformers' mask-interface signature -> an attnkit mask for the ``"attnkit"`` kernel.

    Args:
        batch_size, q_length, kv_length: B, Lq and Lk of the attention calls this mask serves.
        q_offset, kv_offset: absolute positions of the first query and key.
        mask_function: transformers' pattern (default: causal).
        attention_mask: the 2-D padding mask (B, >= kv_offset + Lk), True = real token.
        kwargs: the other arguments transformers passes (``use_vmap``, ``device``, ...), used
            only by the dense fallback.

    Returns:
        A structured :class:`attnkit.masks.Mask` (causal, sliding window, padding, document,
        and their compositions), or ``masks.dense(...)`` (B, 1, Lq, Lk) when the pattern has a
        piece attnkit does not know.
    """
    mu = import_transformers().masking_utils
    mask_function = mu.causal_mask_function if mask_function is None else mask_function
    layout = MaskLayout(batch_size, q_length, kv_length, _as_int(q_offset), _as_int(kv_offset))
    pattern = translate_mask_function(mask_function, layout)
    if pattern is None:
        dense = mu.sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                             q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
                             attention_mask=attention_mask, allow_is_causal_skip=False,
                             allow_is_bidirectional_skip=False,
                             use_vmap=kwargs.get("use_vmap", False),
                             device=kwargs.get("device", "cpu"))
        return masks.dense(dense)
    if attention_mask is not None:
        padding = _padding_mask(attention_mask, layout)
        if padding is not None:
            pattern = padding if pattern.band(q_length, kv_length) == (None, None) \
                else pattern & padding
    return pattern
