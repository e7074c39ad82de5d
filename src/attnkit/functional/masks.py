"""Composable attention masks.

A mask says which (query, key) pairs may attend (``True`` = may attend). Masks compose with
``&``, ``|`` and ``~`` and know, analytically, which tiles of the score matrix are empty, full or
partial, so a tiled backend can skip work without ever building the ``Lq x Lk`` matrix.

Shape legend:
    B   batch size            H   heads
    Lq  query length          Lk  key length
    nQ  query tiles           nK  key tiles

Alignment: for ``Lq != Lk`` (decoding with a KV cache) positional masks are aligned to the bottom
right, i.e. query row ``i`` sits at absolute position ``i + (Lk - Lq)``, so the last query is the
last key. This is what incremental decoding needs; pass ``offset`` to choose another alignment.

Plain PyTorch equivalent of ``attention(q, k, v, mask=m)``::

    allowed = m.dense(Lq, Lk)                       # (B|1, H|1, Lq, Lk) bool
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, -1).nan_to_num(0.0) @ v
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from attnkit.functional.indexing import index_grid

# Tile states, ordered so that "and" is a minimum and "or" a maximum.
EMPTY = 0
PARTIAL = 1
FULL = 2

__all__ = [
    "EMPTY",
    "FULL",
    "PARTIAL",
    "Mask",
    "MaskStructure",
    "causal",
    "dense",
    "document",
    "full",
    "is_causal",
    "padding",
    "sink",
    "sliding_window",
]


def _default_offset(offset: int | None, lq: int, lk: int) -> int:
    """Query ``i`` sits at key position ``i + offset``; bottom-right alignment by default."""
    return lk - lq if offset is None else offset


def _tile_bounds(length: int, block: int, device: torch.device | None) -> tuple[Tensor, Tensor]:
    """First and last (inclusive) index of each tile: two (n,) long tensors."""
    starts = torch.arange(0, length, block, device=device)
    ends = torch.clamp(starts + block, max=length) - 1
    return starts, ends


def _tile_reduce(values: Tensor, block: int, dim: int,
                 reduce: Callable[[Tensor, int], Tensor]) -> Tensor:
    """Reduce ``values`` over tiles of ``block`` along ``dim`` (the last tile may be short) with
    ``reduce(tensor, dim)``: ``torch.amin``, ``torch.amax``, ``torch.any`` or ``torch.all``."""
    dim = dim % values.dim()
    length = values.shape[dim]
    n = math.ceil(length / block)
    # Repeat the last element into the short tile: it never changes a min, max, any or all.
    index = torch.arange(n * block, device=values.device).clamp(max=length - 1)
    values = values.index_select(dim, index)
    shape = list(values.shape)
    shape[dim : dim + 1] = [n, block]
    return reduce(values.reshape(shape), dim + 1)


def _states_from_bounds(is_full: Tensor, is_empty: Tensor) -> Tensor:
    """Encode boolean full/empty tile maps as EMPTY / PARTIAL / FULL int8."""
    states = torch.full(is_full.shape, PARTIAL, dtype=torch.int8, device=is_full.device)
    states[is_full] = FULL
    states[is_empty] = EMPTY
    return states


Band = tuple[int | None, int | None]
Runs = list[list[tuple[int, int]]]


@dataclass(frozen=True)
class MaskStructure:
    """What a planner may rely on about a mask at given lengths (:meth:`Mask.structure`).

    ``kind`` is one of:

    - ``"full"``: every query attends every key;
    - ``"band"``: exactly the keys ``q + lo <= k <= q + hi`` for every sequence and head (a side
      is None when it excludes no key at these lengths);
    - ``"documents"``: block diagonal: per sequence, ``runs`` ``[start, end)`` whose queries
      attend exactly the keys of their own run (causally inside it when ``causal``);
    - ``"padding"``: key padding ``key_valid`` (B, Lk) (True = real key), intersected with the
      band ``lo`` / ``hi`` (both None: no band);
    - ``"opaque"``: anything else; evaluate it with :meth:`Mask.tile`.
    """

    kind: Literal["full", "band", "documents", "padding", "opaque"]
    lo: int | None = None  # band / padding: keys k >= q + lo
    hi: int | None = None  # band / padding: keys k <= q + hi
    runs: Runs | None = None  # documents: per sequence, [start, end) runs
    causal: bool = False  # documents: causal inside each run
    key_valid: Tensor | None = None  # padding: (B, Lk) bool

    @property
    def band(self) -> Band | None:
        """(lo, hi) for "full" ((None, None)) and "band"; None for the other kinds."""
        if self.kind == "full":
            return (None, None)
        return (self.lo, self.hi) if self.kind == "band" else None


def is_causal(mask: Mask | None, lq: int, lk: int, *, offset: int | None = None) -> bool:
    """Whether ``mask`` is exactly causal at these lengths: query ``i`` sees the keys
    ``j <= i + offset`` and no other restriction (``offset`` defaults to ``Lk - Lq``, the
    bottom-right alignment of :func:`causal`; SDPA's ``is_causal`` is ``offset=0``)."""
    if mask is None:
        return False
    want = lk - lq if offset is None else offset
    return mask.band(lq, lk) == (None, want)  # the cheap part of structure(): no tensors


class Mask(ABC):
    """A boolean attention mask over (batch, head, query, key); ``True`` means may attend."""

    #: Batch size the mask is specific to, or None if it applies to any batch.
    batch_size: int | None = None
    #: Head count the mask is specific to, or None if shared by all heads.
    num_heads: int | None = None

    @abstractmethod
    def allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int) -> Tensor:
        """Elementwise rule on broadcastable index tensors (FlexAttention's ``mask_mod`` form)."""

    @abstractmethod
    def block_states(self, lq: int, lk: int, block_q: int, block_k: int,
                     device: torch.device | None = None) -> Tensor:
        """Tile states without building ``Lq x Lk``: int8 (B|1, H|1, nQ, nK), EMPTY/PARTIAL/FULL."""

    # -- derived views -----------------------------------------------------------------------
    def structure(self, lq: int, lk: int) -> MaskStructure:
        """The mask's shape at these lengths, as far as it is known analytically: full, a band,
        block-diagonal documents, key padding (with a band), or opaque (see
        :class:`MaskStructure`). Planners read this, never the mask's class."""
        band = self.band(lq, lk)
        if band == (None, None):
            return MaskStructure("full")
        if band is not None:
            return MaskStructure("band", band[0], band[1])
        diagonal = self.block_diagonal(lq, lk)
        if diagonal is not None:
            return MaskStructure("documents", runs=diagonal[0], causal=diagonal[1])
        padded = self.key_padding(lq, lk)
        if padded is not None:
            key_valid, (lo, hi) = padded
            return MaskStructure("padding", lo, hi, key_valid=key_valid)
        return MaskStructure("opaque")

    def key_padding(self, lq: int, lk: int) -> tuple[Tensor, Band] | None:
        """``(key_valid (B, Lk), (lo, hi))`` if the mask is key padding, possibly intersected
        with a band (``(None, None)``: none), else None. Read it through :meth:`structure`."""
        return None

    def tile(self, q_idx: Tensor, k_idx: Tensor, lq: int, lk: int) -> Tensor:
        """The mask on query positions ``q_idx`` (tq,) and keys ``k_idx`` (tk,):
        bool (B|1, H|1, tq, tk). The one way to evaluate any mask on part of the score matrix."""
        b, h, q, k = index_grid(q_idx, k_idx, self.batch_size or 1, self.num_heads or 1)
        return self.allowed(b, h, q, k, lq, lk).expand(b.shape[0], h.shape[1], q.shape[2],
                                                      k.shape[3])

    def band(self, lq: int, lk: int) -> tuple[int | None, int | None] | None:
        """``(lo, hi)`` if the mask allows exactly the keys ``q + lo <= k <= q + hi`` for every
        batch element and head, else None. A side is None when it excludes no key at these
        lengths (unbounded, or wider than the sequences), so ``(None, None)`` allows everything.

        The blocked backend runs a causal band as one ``is_causal`` kernel call.
        """
        return None

    def block_diagonal(self, lq: int, lk: int) -> tuple[list[list[tuple[int, int]]], bool] | None:
        """``(runs, causal)`` if the mask is block diagonal: per batch element, runs
        ``[start, end)`` covering the sequence whose queries attend exactly the keys of their own
        run (causally inside it when ``causal``), the same for every head; else None.

        Packed documents (with or without ``causal()``) are; kernels run each run as one call.
        """
        return None

    def dense(self, lq: int, lk: int, device: torch.device | None = None) -> Tensor:
        """The dense boolean mask, (B|1, H|1, Lq, Lk)."""
        return self.tile(torch.arange(lq, device=device), torch.arange(lk, device=device), lq, lk)

    def mask_mod(self, lq: int, lk: int) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for these lengths."""

        def mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return self.allowed(b, h, q_idx, kv_idx, lq, lk)

        return mod

    def draw(self, lq: int, lk: int, block_q: int = 1, block_k: int = 1) -> str:
        """ASCII tile pattern of batch 0, head 0: ``#`` full, ``.`` partial, blank empty."""
        states = self.block_states(lq, lk, block_q, block_k)[0, 0]
        glyph = {EMPTY: " ", PARTIAL: ".", FULL: "#"}
        rows = ["".join(glyph[int(s)] for s in row) for row in states]
        return "\n".join("|" + r + "|" for r in rows)

    def on_device(self, device: torch.device) -> Mask:
        """This mask with its tensors (lengths, ids, dense tables) on ``device``.

        ``validate`` moves masks next to ``q`` once, so backends (FlexAttention's compiled
        ``mask_mod`` especially) never copy tensors between devices inside a kernel.
        """
        return self

    def check_shape(self, batch: int, heads: int, lq: int, lk: int) -> None:
        """Raise ValueError if the mask cannot apply to attention of this shape."""
        if self.batch_size is not None and self.batch_size not in (1, batch):
            raise ValueError(f"mask {self!r} is for batch size {self.batch_size}, but q has batch "
                             f"size {batch}; build the mask from this batch's lengths or ids")
        if self.num_heads is not None and self.num_heads not in (1, heads):
            raise ValueError(f"mask {self!r} has {self.num_heads} heads, but q has {heads}; "
                             f"give one mask per query head or a single shared one")
        self._check_lengths(lq, lk)

    def _check_lengths(self, lq: int, lk: int) -> None:
        """Raise ValueError if the tensors of a data mask do not cover Lq queries and Lk keys
        (masks without tensors apply to any lengths)."""
        return None  # a hook: the classes that hold tensors check them

    # -- composition ---------------------------------------------------------------------------
    def __and__(self, other: Mask) -> Mask:
        return _And(self, other)

    def __or__(self, other: Mask) -> Mask:
        return _Or(self, other)

    def __invert__(self) -> Mask:
        return _Not(self)


def _merged_dim(name: str, a: int | None, b: int | None) -> int | None:
    if a is None or a == 1:
        return b if b is not None else a
    if b is None or b == 1 or a == b:
        return a
    raise ValueError(f"cannot combine masks with {name} {a} and {b}")


class _Binary(Mask):
    symbol = "?"

    def __init__(self, left: Mask, right: Mask) -> None:
        self.left, self.right = left, right
        self.batch_size = _merged_dim("batch size", left.batch_size, right.batch_size)
        self.num_heads = _merged_dim("head count", left.num_heads, right.num_heads)

    def check_shape(self, batch: int, heads: int, lq: int, lk: int) -> None:
        self.left.check_shape(batch, heads, lq, lk)
        self.right.check_shape(batch, heads, lq, lk)

    def on_device(self, device: torch.device) -> Mask:
        left, right = self.left.on_device(device), self.right.on_device(device)
        if left is self.left and right is self.right:
            return self
        return type(self)(left, right)

    def __repr__(self) -> str:
        return f"({self.left!r} {self.symbol} {self.right!r})"


class _And(_Binary):
    symbol = "&"

    def allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int) -> Tensor:
        return self.left.allowed(b, h, q, k, lq, lk) & self.right.allowed(b, h, q, k, lq, lk)

    def block_states(self, lq: int, lk: int, block_q: int, block_k: int,
                     device: torch.device | None = None) -> Tensor:
        a = self.left.block_states(lq, lk, block_q, block_k, device)
        b = self.right.block_states(lq, lk, block_q, block_k, device)
        return torch.minimum(a, b)

    def band(self, lq: int, lk: int) -> tuple[int | None, int | None] | None:
        a, b = self.left.band(lq, lk), self.right.band(lq, lk)
        if a is None or b is None:
            return None
        lows = [v for v in (a[0], b[0]) if v is not None]
        highs = [v for v in (a[1], b[1]) if v is not None]
        return (max(lows) if lows else None, min(highs) if highs else None)

    def block_diagonal(self, lq: int, lk: int) -> tuple[list[list[tuple[int, int]]], bool] | None:
        for blocks, other in ((self.left, self.right), (self.right, self.left)):
            found = blocks.block_diagonal(lq, lk)
            if found is None:
                continue
            band = other.band(lq, lk)
            if band == (None, None):
                return found
            if band == (None, 0) and not found[1]:  # causal inside each run
                return found[0], True
        return None

    def key_padding(self, lq: int, lk: int) -> tuple[Tensor, Band] | None:
        parts = [self.left.structure(lq, lk), self.right.structure(lq, lk)]
        if not any(p.kind == "padding" for p in parts):
            return None
        key_valid: Tensor | None = None
        lows: list[int] = []
        highs: list[int] = []
        for part in parts:
            if part.kind not in ("full", "band", "padding"):
                return None
            if part.key_valid is not None:
                key_valid = part.key_valid if key_valid is None else key_valid & part.key_valid
            lows += [part.lo] if part.lo is not None else []
            highs += [part.hi] if part.hi is not None else []
        assert key_valid is not None
        return key_valid, (max(lows) if lows else None, min(highs) if highs else None)


class _Or(_Binary):
    symbol = "|"

    def allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int) -> Tensor:
        return self.left.allowed(b, h, q, k, lq, lk) | self.right.allowed(b, h, q, k, lq, lk)

    def block_states(self, lq: int, lk: int, block_q: int, block_k: int,
                     device: torch.device | None = None) -> Tensor:
        a = self.left.block_states(lq, lk, block_q, block_k, device)
        b = self.right.block_states(lq, lk, block_q, block_k, device)
        return torch.maximum(a, b)


class _Not(Mask):
    def __init__(self, inner: Mask) -> None:
        self.inner = inner
        self.batch_size = inner.batch_size
        self.num_heads = inner.num_heads

    def allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int) -> Tensor:
        return ~self.inner.allowed(b, h, q, k, lq, lk)

    def block_states(self, lq: int, lk: int, block_q: int, block_k: int,
                     device: torch.device | None = None) -> Tensor:
        return FULL - self.inner.block_states(lq, lk, block_q, block_k, device)

    def check_shape(self, batch: int, heads: int, lq: int, lk: int) -> None:
        self.inner.check_shape(batch, heads, lq, lk)

    def on_device(self, device: torch.device) -> Mask:
        inner = self.inner.on_device(device)
        return self if inner is self.inner else _Not(inner)

    def __repr__(self) -> str:
        return f"~{self.inner!r}"


class _Full(Mask):
    def allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int) -> Tensor:
        return torch.ones_like(q - k, dtype=torch.bool)

    def block_states(self, lq: int, lk: int, block_q: int, block_k: int,
                     device: torch.device | None = None) -> Tensor:
        n_q, n_k = math.ceil(lq / block_q), math.ceil(lk / block_k)
        return torch.full((1, 1, n_q, n_k), FULL, dtype=torch.int8, device=device)

    def band(self, lq: int, lk: int) -> tuple[int | None, int | None] | None:
        return (None, None)

    def __repr__(self) -> str:
        return "full()"


class _Band(Mask):
    """Keys ``j`` with ``i + offset - left <= j <= i + offset + right`` (left None: unbounded,
    the causal mask)."""

    def __init__(self, left: int | None, right: int, offset: int | None) -> None:
        self.left, self.right, self.offset = left, right, offset

    def allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int) -> Tensor:
        rel = k - (q + _default_offset(self.offset, lq, lk))  # key position relative to query
        ok = rel <= self.right
        if self.left is not None:
            ok = ok & (rel >= -self.left)
        return ok

    def block_states(self, lq: int, lk: int, block_q: int, block_k: int,
                     device: torch.device | None = None) -> Tensor:
        off = _default_offset(self.offset, lq, lk)
        q0, q1 = _tile_bounds(lq, block_q, device)
        k0, k1 = _tile_bounds(lk, block_k, device)
        q0, q1 = (q0 + off)[:, None], (q1 + off)[:, None]
        k0, k1 = k0[None, :], k1[None, :]
        # Full: k <= q + right for every pair of the tile; empty: for no pair.
        is_full = k1 <= q0 + self.right
        is_empty = k0 > q1 + self.right
        if self.left is not None:  # and k >= q - left
            is_full &= k0 >= q1 - self.left
            is_empty |= k1 < q0 - self.left
        return _states_from_bounds(is_full, is_empty)[None, None]

    def band(self, lq: int, lk: int) -> tuple[int | None, int | None] | None:
        off = _default_offset(self.offset, lq, lk)
        lo = None if self.left is None else off - self.left
        hi = off + self.right
        # A side binds only if some (query, key) pair falls outside it: k >= q + lo fails for
        # some pair iff lo > -(lq - 1); k <= q + hi fails for some pair iff hi < lk - 1.
        return (lo if lo is not None and lo > 1 - lq else None, hi if hi < lk - 1 else None)

    def __repr__(self) -> str:
        if self.left is None:  # only causal() leaves the left side open
            return "causal()" if self.offset is None else f"causal(offset={self.offset})"
        right = "" if self.right == 0 else f", right={self.right}"
        off = "" if self.offset is None else f", offset={self.offset}"
        return f"sliding_window({self.left}{right}{off})"


class _Sink(Mask):
    """The first ``count`` keys, for every query ("attention sinks")."""

    def __init__(self, count: int) -> None:
        self.count = count

    def allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int) -> Tensor:
        return (k < self.count) & (q >= 0)

    def block_states(self, lq: int, lk: int, block_q: int, block_k: int,
                     device: torch.device | None = None) -> Tensor:
        k0, k1 = _tile_bounds(lk, block_k, device)
        states = _states_from_bounds(k1 < self.count, k0 >= self.count)
        return states[None, None, None, :].expand(1, 1, math.ceil(lq / block_q), -1)

    def __repr__(self) -> str:
        return f"sink({self.count})"


class _Padding(Mask):
    """Key padding: key ``j`` of sequence ``b`` is real iff ``key_valid[b, j]``."""

    def __init__(self, lengths: Tensor | None, key_valid: Tensor | None) -> None:
        self.lengths, self.key_valid = lengths, key_valid
        source = lengths if lengths is not None else key_valid
        assert source is not None
        self.batch_size = source.shape[0]  # symbolic under tracing: keeps export batch-dynamic

    def allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int) -> Tensor:
        if self.lengths is not None:
            return (k < self.lengths.to(k.device)[b]) & (q >= 0)
        assert self.key_valid is not None
        self._check_keys(lk)
        return self.key_valid.to(k.device)[b, k] & (q >= 0)

    def key_padding(self, lq: int, lk: int) -> tuple[Tensor, Band] | None:
        if self.lengths is not None:
            keys = torch.arange(lk, device=self.lengths.device)
            return keys[None, :] < self.lengths[:, None], (None, None)  # (B, Lk)
        assert self.key_valid is not None
        self._check_keys(lk)
        return self.key_valid, (None, None)

    def on_device(self, device: torch.device) -> Mask:
        source = self.lengths if self.lengths is not None else self.key_valid
        if source is None or source.device == device:
            return self
        return _Padding(None if self.lengths is None else self.lengths.to(device),
                        None if self.key_valid is None else self.key_valid.to(device))

    def _check_lengths(self, lq: int, lk: int) -> None:
        self._check_keys(lk)

    def _check_keys(self, lk: int) -> None:
        if self.key_valid is not None and self.key_valid.shape[1] != lk:
            raise ValueError(f"padding mask covers {self.key_valid.shape[1]} keys but there are "
                             f"{lk} keys")

    def block_states(self, lq: int, lk: int, block_q: int, block_k: int,
                     device: torch.device | None = None) -> Tensor:
        n_q = math.ceil(lq / block_q)
        if self.lengths is not None:
            k0, k1 = _tile_bounds(lk, block_k, device)
            lengths = self.lengths.to(device)[:, None]
            states = _states_from_bounds(k1[None, :] < lengths, k0[None, :] >= lengths)
        else:
            assert self.key_valid is not None
            valid = self.key_valid.to(device)
            states = _states_from_bounds(_tile_reduce(valid, block_k, 1, torch.all),
                                         ~_tile_reduce(valid, block_k, 1, torch.any))
        return states[:, None, None, :].expand(-1, 1, n_q, -1)

    def __repr__(self) -> str:
        if self.lengths is not None:
            return f"padding(lengths={self.lengths.tolist()})"
        return f"padding(key_valid of shape {tuple(self.key_valid.shape)})"  # type: ignore[union-attr]


class _Document(Mask):
    """Packed sequences: query and key attend iff they carry the same document id."""

    def __init__(self, q_ids: Tensor, kv_ids: Tensor) -> None:
        self.q_ids, self.kv_ids = q_ids, kv_ids
        self.batch_size = q_ids.shape[0]

    def on_device(self, device: torch.device) -> Mask:
        if self.q_ids.device == device and self.kv_ids.device == device:
            return self
        return _Document(self.q_ids.to(device), self.kv_ids.to(device))

    def _check_lengths(self, lq: int, lk: int) -> None:
        if self.q_ids.shape[1] != lq or self.kv_ids.shape[1] != lk:
            raise ValueError(f"document ids cover {self.q_ids.shape[1]} queries and "
                             f"{self.kv_ids.shape[1]} keys, but attention has {lq} queries and "
                             f"{lk} keys; pass kv_ids when keys differ from queries")

    def allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int) -> Tensor:
        self._check_lengths(lq, lk)
        q_ids, kv_ids = self.q_ids.to(q.device), self.kv_ids.to(k.device)
        return q_ids[b, q] == kv_ids[b, k]

    def block_states(self, lq: int, lk: int, block_q: int, block_k: int,
                     device: torch.device | None = None) -> Tensor:
        q_ids, kv_ids = self.q_ids.to(device), self.kv_ids.to(device)
        q_lo = _tile_reduce(q_ids, block_q, 1, torch.amin)[:, :, None]  # (B, nQ, 1)
        q_hi = _tile_reduce(q_ids, block_q, 1, torch.amax)[:, :, None]
        k_lo = _tile_reduce(kv_ids, block_k, 1, torch.amin)[:, None, :]  # (B, 1, nK)
        k_hi = _tile_reduce(kv_ids, block_k, 1, torch.amax)[:, None, :]
        # Disjoint id ranges share no id; one id on both sides matches everywhere.
        is_empty = (q_hi < k_lo) | (k_hi < q_lo)
        is_full = (q_lo == q_hi) & (k_lo == k_hi) & (q_lo == k_lo)
        return _states_from_bounds(is_full, is_empty)[:, None]

    def block_diagonal(self, lq: int, lk: int) -> tuple[list[list[tuple[int, int]]], bool] | None:
        self._check_lengths(lq, lk)
        if not torch.equal(self.q_ids, self.kv_ids):  # keys other than the queries
            return None
        runs = []
        for row in self.q_ids.cpu():
            starts = [0, *(torch.nonzero(row[1:] != row[:-1]).flatten() + 1).tolist()]
            if len(starts) != len(torch.unique(row)):  # an id comes back later: not diagonal
                return None
            runs.append(list(zip(starts, [*starts[1:], lq])))
        return runs, False

    def __repr__(self) -> str:
        return f"document({self.q_ids.shape[0]} sequences)"


class _Dense(Mask):
    def __init__(self, allowed: Tensor) -> None:
        if allowed.dtype != torch.bool:
            raise ValueError(f"dense mask must be a bool tensor (True = may attend), "
                             f"got {allowed.dtype}; use bias.dense() for additive float masks")
        if allowed.dim() < 2 or allowed.dim() > 4:
            raise ValueError(f"dense mask must have 2 to 4 dims (.., Lq, Lk), got shape "
                             f"{tuple(allowed.shape)}")
        self.lengths = tuple(allowed.shape[-2:])  # (Lq, Lk) it was built for
        while allowed.dim() < 4:
            allowed = allowed.unsqueeze(0)
        self.tensor = allowed  # (B|1, H|1, Lq, Lk)
        self.batch_size = allowed.shape[0]
        self.num_heads = allowed.shape[1]

    def _check_lengths(self, lq: int, lk: int) -> None:
        if self.lengths != (lq, lk):
            raise ValueError(f"dense mask is {self.lengths} but attention is ({lq}, {lk}) "
                             f"(Lq, Lk)")

    def on_device(self, device: torch.device) -> Mask:
        return self if self.tensor.device == device else _Dense(self.tensor.to(device))

    def _checked(self, lq: int, lk: int, device: torch.device | None) -> Tensor:
        self._check_lengths(lq, lk)
        return self.tensor.to(device)

    def allowed(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int) -> Tensor:
        t = self._checked(lq, lk, q.device)
        bb = b if t.shape[0] > 1 else torch.zeros_like(b)
        hh = h if t.shape[1] > 1 else torch.zeros_like(h)
        return t[bb, hh, q, k]

    def dense(self, lq: int, lk: int, device: torch.device | None = None) -> Tensor:
        return self._checked(lq, lk, device)

    def block_states(self, lq: int, lk: int, block_q: int, block_k: int,
                     device: torch.device | None = None) -> Tensor:
        t = self._checked(lq, lk, device)
        any_q = _tile_reduce(_tile_reduce(t, block_q, 2, torch.any), block_k, 3, torch.any)
        all_q = _tile_reduce(_tile_reduce(t, block_q, 2, torch.all), block_k, 3, torch.all)
        return _states_from_bounds(all_q, ~any_q)

    def __repr__(self) -> str:
        return f"dense({tuple(self.tensor.shape)})"


# -- public constructors ------------------------------------------------------------------------
def full() -> Mask:
    """Every query may attend to every key."""
    return _Full()


def causal(offset: int | None = None) -> Mask:
    """Query ``i`` attends keys ``j <= i + offset`` (default ``Lk - Lq``: bottom-right aligned)."""
    return _Band(None, 0, offset)


def sliding_window(left: int, right: int = 0, offset: int | None = None) -> Mask:
    """Query ``i`` attends keys within ``[i - left, i + right]`` (positions aligned as in causal).

    ``sliding_window(w)`` alone is already causal: each token sees itself and ``w`` before it.
    """
    if left < 0 or right < 0:
        raise ValueError(f"sliding_window needs left >= 0 and right >= 0, got left={left}, "
                         f"right={right}")
    return _Band(left, right, offset)


def sink(count: int) -> Mask:
    """The first ``count`` keys, visible to every query: StreamingLLM's attention sinks.

    ``causal() & (sliding_window(w) | sink(4))`` is the streaming pattern.
    """
    if count < 0:
        raise ValueError(f"sink needs count >= 0, got {count}")
    return _Sink(count)


def padding(lengths_or_valid: Tensor | list[int]) -> Mask:
    """Key padding from lengths ``(B,)``, or a boolean key mask ``(B, Lk)`` (True = real key)."""
    t = torch.as_tensor(lengths_or_valid)
    if t.dtype == torch.bool:
        if t.dim() != 2:
            raise ValueError(f"a boolean padding mask must be (B, Lk), got shape {tuple(t.shape)}")
        return _Padding(None, t)
    if t.dim() != 1 or t.is_floating_point():
        raise ValueError(f"padding lengths must be a 1-D integer tensor (B,), got "
                         f"{t.dtype} of shape {tuple(t.shape)}")
    if (t < 0).any():
        raise ValueError(f"padding lengths must be >= 0, got {t.tolist()}")
    return _Padding(t.long(), None)


def document(ids: Tensor, kv_ids: Tensor | None = None) -> Mask:
    """Packed documents: ``ids`` (B, L) integer document ids; tokens attend within their document.

    Give ``kv_ids`` (B, Lk) when keys differ from queries (e.g. cached keys). Combine with
    ``causal()`` for packed causal language modelling.
    """
    q_ids = torch.as_tensor(ids)
    if q_ids.dim() == 1:
        q_ids = q_ids[None]
    k_ids = q_ids if kv_ids is None else torch.as_tensor(kv_ids)
    if k_ids.dim() == 1:
        k_ids = k_ids[None]
    if q_ids.is_floating_point() or k_ids.is_floating_point():
        raise ValueError(f"document ids must be integers, got {q_ids.dtype} (ids) and "
                         f"{k_ids.dtype} (kv_ids)")
    if q_ids.shape[0] != k_ids.shape[0]:
        raise ValueError(f"document ids for queries have batch {q_ids.shape[0]} but for keys "
                         f"{k_ids.shape[0]}")
    return _Document(q_ids.long(), k_ids.long())


def dense(allowed: Tensor) -> Mask:
    """A materialized boolean mask broadcastable to (B, H, Lq, Lk); True = may attend."""
    return _Dense(allowed)
