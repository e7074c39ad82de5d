"""The CPU fast path of the ``blocked`` backend: torch's fused flash kernel on key ranges.

The mask's tile states (EMPTY / PARTIAL / FULL, computed analytically) are turned into *work
items*: for each query block, every contiguous run of non-empty key tiles becomes one call of
torch's fused CPU kernel (wrapped in :mod:`attnkit.backends.cpu_flash`), with a small
additive mask only when the run holds partial tiles. A long run with partial tiles only at its
ends is split into masked ends and an unmasked middle. Items of one shape whose query blocks are
consecutive and whose key ranges move by a fixed step (a sliding window, the diagonal of a
causal mask) run as *one* kernel call over strided views, so there is no copy and no Python loop
over tiles. Consecutive query blocks with the same fully visible key range are merged into one
item (the whole of a plain or document-interior attention is one call).

Some masks are planned by their structure instead of by tiles (``by_structure``): a causal band
becomes one ``is_causal`` call over the causal square (the kernel skips the key chunks above
each query block itself), packed documents one square call per document, and a narrow two-sided
band (a sliding window) blocks of ``band_block`` query rows, each with exactly the keys its rows
reach rather than whole key tiles.

A band mask depends only on ``k - q``, so items whose key range moves with their query range
share one additive mask, built from the first item alone. Kernel calls run in pieces of about
``piece_elements`` output elements, so their outputs come from reused heap memory. The sizes are
tuning constants (:mod:`attnkit.backends.tuning`).

Items of one query block are merged exactly with their log-sum-exp (FlashAttention's rescaling)::

    lse = logaddexp(lse_1, lse_2);  out = exp(lse_1 - lse) * out_1 + exp(lse_2 - lse) * out_2

The backward runs the fused backward kernel on the same items with the *global* output and
log-sum-exp: with ``P = exp(S - lse)`` and ``delta = rowsum(dO * O)`` the flash backward formulas
give exactly each key range's share of dq and the range's dk, dv.

The kernel is private to torch: :mod:`attnkit.backends.cpu_flash` wraps it and checks it once,
and the pure
PyTorch tile loop in :mod:`attnkit.backends.blocked` stays the fallback (other devices, biases,
softcap, dtypes other than float32 / float64).

Shape legend: B batch, H heads (query heads; GQA keys are expanded), Lq / Lk lengths,
n items in a kernel call, q / k item lengths, D / Dv head dims.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from attnkit.backends import cpu_flash, tuning
from attnkit.functional.masks import EMPTY, FULL, PARTIAL, Mask
from attnkit.functional.math import AttentionSpec, expand_kv, finite_or

__all__ = ["FusedPlan", "fused_backward", "fused_forward", "fused_supports", "make_plan"]

_FUSED_DTYPES = (torch.float32, torch.float64)


def fused_supports(spec: AttentionSpec) -> bool:
    """Whether the fused path can compute ``spec`` exactly (else the pure tile loop runs)."""
    return (spec.q.device.type == "cpu" and spec.q.dtype in _FUSED_DTYPES
            and spec.bias is None and spec.softcap is None and spec.dropout_p == 0.0
            and spec.lq > 0 and spec.lk > 0
            # torch's fused CPU flash kernel needs Q/K/V of one head size (Dv == D).
            and spec.q.shape[-1] == spec.v.shape[-1] and cpu_flash.fused_kernel_available())


@dataclass(frozen=True)
class _Item:
    """One kernel call's worth of work for one query range."""

    q0: int  # first query row
    q_len: int  # query rows
    k0: int  # first key
    k_len: int  # keys
    masked: bool = False  # some tile in range is partial: apply the mask
    level: int = 0  # how many earlier items the query rows already have (0 = write, else merge)
    pattern: tuple[int, ...] = ()  # tile states along the key range (masked items only)
    causal: bool = False  # square item allowing keys k - k0 <= q - q0 (the kernel's is_causal)


@dataclass(frozen=True)
class _Group:
    """Items of one shape with consecutive query ranges and key ranges a fixed step apart."""

    first: _Item
    n: int  # number of items
    k_step: int  # key offset between consecutive items

    @property
    def rows(self) -> tuple[int, int]:
        return self.first.q0, self.first.q0 + self.n * self.first.q_len


def _row_items(row: list[int], qi: int, bq: int, bk: int, lq: int, lk: int) -> list[_Item]:
    """Items of query block ``qi`` from its tile states (EMPTY / PARTIAL / FULL per key tile)."""
    q0, q_len = qi * bq, min(bq, lq - qi * bq)
    runs: list[tuple[int, int]] = []  # [start, end) key tiles
    start = None
    for kj, state in enumerate([*row, EMPTY]):
        if state != EMPTY and start is None:
            start = kj
        elif state == EMPTY and start is not None:
            runs.append((start, kj))
            start = None
    pieces: list[tuple[int, int, bool]] = []  # [start, end) key tiles, masked
    for a, b in runs:
        lo, hi = a, b
        while lo < hi and row[lo] != FULL:
            lo += 1
        while hi > lo and row[hi - 1] != FULL:
            hi -= 1
        middle_full = hi > lo and all(s == FULL for s in row[lo:hi])
        if middle_full and (lo == a and hi == b):
            pieces.append((a, b, False))
        elif middle_full and hi - lo >= tuning.current().min_full_tiles_to_split:
            if lo > a:
                pieces.append((a, lo, True))
            pieces.append((lo, hi, False))
            if b > hi:
                pieces.append((hi, b, True))
        else:
            pieces.append((a, b, True))
    items = []
    for level, (a, b, masked) in enumerate(pieces):
        k0, k1 = a * bk, min(b * bk, lk)
        items.append(_Item(q0, q_len, k0, k1 - k0, masked, level,
                           tuple(row[a:b]) if masked else ()))
    return items


def _causal_items(hi: int, lq: int, lk: int) -> list[_Item] | None:
    """Items for the causal band ``k <= q + hi``: keys [0, hi) for every row, unmasked, then the
    causal square [hi, hi + Lq) as one ``is_causal`` call (the kernel skips the key chunks past
    each query block itself). None for alignments that leave rows without keys or run past the
    keys' end; the tile plan takes those.

    ``attnkit bench tiles`` compares it with 128-row tiles (docs/benchmarks.md). Two-sided bands
    (sliding windows) do not use ``is_causal``: torch's kernel skips causal work in 512-key
    chunks only, so their edge triangles would cost about full squares (tried and removed); see
    :func:`_band_items` instead.
    """
    if hi < 0 or lq + hi > lk:
        return None
    items = []
    if hi > 0:
        items.append(_Item(0, lq, 0, hi))
    items.append(_Item(0, lq, hi, lq, level=len(items), causal=True))
    return items


def _band_items(lo: int, hi: int, lq: int, lk: int, bk: int, block: int) -> list[_Item]:
    """Items for the band ``q + lo <= k <= q + hi``: blocks of ``block`` query rows, each
    with the keys its rows reach, clipped to the sequence (rows that reach none get no item).
    All of the range is masked: each item's ``pattern`` marks every ``bk`` columns partial."""
    items = []
    for q0 in range(0, lq, block):
        q_len = min(block, lq - q0)
        k0, k1 = max(0, q0 + lo), min(lk, q0 + q_len + hi)
        if k1 > k0:
            items.append(_Item(q0, q_len, k0, k1 - k0, masked=True,
                               pattern=(PARTIAL,) * math.ceil((k1 - k0) / bk)))
    return items


def _plan(states: list[list[int]], bq: int, bk: int, lq: int, lk: int,
          relative: bool) -> list[_Group]:
    """Work items for one batch element, grouped into kernel calls, level 0 first."""
    items: list[_Item] = []
    for qi, row in enumerate(states):
        items.extend(_row_items(row, qi, bq, bk, lq, lk))
    return _group_items(items, relative)


def _group_items(items: list[_Item], relative: bool) -> list[_Group]:
    """Merge and group items into kernel calls, level 0 first. ``relative``: the mask depends
    only on ``k - q`` (a band), so a group whose keys move with its queries has one mask."""
    # Merge consecutive query blocks that see the same unmasked key range into one item.
    merged: list[_Item] = []
    for it in items:
        prev = merged[-1] if merged else None
        if (prev is not None and not it.masked and not prev.masked and prev.level == it.level
                and not it.causal and not prev.causal
                and prev.k0 == it.k0 and prev.k_len == it.k_len
                and prev.q0 + prev.q_len == it.q0):
            merged[-1] = _Item(prev.q0, prev.q_len + it.q_len, it.k0, it.k_len, level=it.level)
        else:
            merged.append(it)
    merged.sort(key=lambda it: (it.level, it.masked, it.causal, it.q_len, it.k_len,
                                it.pattern, it.q0))
    groups: list[_Group] = []
    max_mask_elements = tuning.current().max_mask_elements
    for it in merged:
        g = groups[-1] if groups else None
        if g is not None:
            f = g.first
            last_k0 = f.k0 + (g.n - 1) * g.k_step
            step = it.k0 - last_k0 if g.n == 1 else g.k_step
            fits = ((it.level, it.masked, it.causal, it.q_len, it.k_len, it.pattern)
                    == (f.level, f.masked, f.causal, f.q_len, f.k_len, f.pattern))
            within = (not f.masked or (relative and step == f.q_len)
                      or (g.n + 1) * f.q_len * f.k_len <= max_mask_elements)
            if fits and within and it.q0 == g.rows[1] and it.k0 - last_k0 == step and step >= 0:
                groups[-1] = _Group(f, g.n + 1, step)
                continue
        groups.append(_Group(it, 1, 0))
    return groups


def _windows(x: Tensor, start: int, n: int, step: int, length: int) -> Tensor:
    """n strided views of ``length`` rows of x (H, L, D), ``step`` rows apart: (n, H, length, D)."""
    s_h, s_l, s_d = x.stride()
    return x.as_strided((n, x.shape[0], length, x.shape[2]), (step * s_l, s_h, s_l, s_d),
                        x.storage_offset() + start * s_l)


def _group_mask(mask: Mask, group: _Group, batch_index: int, lq: int, lk: int, bk: int,
                dtype: torch.dtype, relative: bool) -> tuple[Tensor, Tensor | None]:
    """Additive mask (n|1, H|1, q, k) of a masked group, and which rows have a key (or None).

    Only the partial tiles are evaluated (full tiles stay 0). A mask that is the same for every
    item (bands: sliding windows, the causal diagonal) is kept once and broadcast; with
    ``relative`` (the mask depends on k - q only) and keys that move with the queries, that is
    known without evaluating more than the first item.
    """
    f = group.first
    n = 1 if relative and group.k_step == f.q_len else group.n
    q_idx = (f.q0 + f.q_len * torch.arange(n))[:, None] + torch.arange(f.q_len)  # (n, q)
    k_starts = (f.k0 + group.k_step * torch.arange(n))[:, None]  # (n, 1)
    b = torch.full((1, 1, 1, 1), batch_index)
    heads = mask.num_heads or 1
    h = torch.arange(heads).view(1, -1, 1, 1)
    parts: list[tuple[int, int, Tensor]] = []
    shared = True
    for t, state in enumerate(f.pattern):
        if state == FULL:
            continue
        c0, c1 = t * bk, min((t + 1) * bk, f.k_len)
        k_idx = k_starts + torch.arange(c0, c1)  # (n, c)
        allowed = mask.allowed(b, h, q_idx[:, None, :, None], k_idx[:, None, None, :], lq, lk)
        allowed = allowed.expand(n, heads, f.q_len, c1 - c0)
        shared = shared and (n == 1 or bool((allowed == allowed[:1]).all()))
        parts.append((c0, c1, allowed))
    m = 1 if shared else n
    additive = torch.zeros(m, heads, f.q_len, f.k_len, dtype=dtype)
    row_has_key = None if FULL in f.pattern else torch.zeros(m, heads, f.q_len, dtype=torch.bool)
    for c0, c1, allowed in parts:
        additive[..., c0:c1].masked_fill_(~allowed[:m], float("-inf"))
        if row_has_key is not None:
            row_has_key |= allowed[:m].any(-1)
    return additive, row_has_key


class FusedPlan:
    """Kernel calls for one (mask, shape, tiles), with their additive masks built once.

    Built in the forward and reused by the backward; holds no q / k / v.
    """

    def __init__(self, mask: Mask | None, lq: int, lk: int, block_q: int, block_k: int,
                 dtype: torch.dtype, *, by_structure: bool = True,
                 band_block: int | None = None) -> None:
        self._args = (mask, lq, lk, block_q, block_k, dtype)
        self.mask, self.lq, self.lk, self.bk, self.dtype = mask, lq, lk, block_k, dtype
        self.band_block: int | None = None  # query rows per block when planned as a band
        band = mask.band(lq, lk) if mask is not None else None
        if band == (None, None):  # the mask allows everything
            mask = self.mask = None
            band = None
        self.relative = band is not None  # the mask depends on k - q only
        lo, hi = band if band is not None and by_structure else (None, None)
        diagonal = (mask.block_diagonal(lq, lk)
                    if band is None and mask is not None and by_structure else None)
        if hi is not None and lo is None and (causal := _causal_items(hi, lq, lk)) is not None:
            self.groups = [_group_items(causal, self.relative)]
        elif lo is not None and hi is not None and hi - lo + 1 <= tuning.current().band_max_width:
            self.band_block = band_block or tuning.current().band_block
            self.groups = [_group_items(_band_items(lo, hi, lq, lk, block_k, self.band_block),
                                        self.relative)]
        elif diagonal is not None:  # packed documents: one square call per document
            runs, causal_runs = diagonal
            self.groups = [_group_items([_Item(a, b - a, a, b - a, causal=causal_runs)
                                         for a, b in row], False) for row in runs]
        elif mask is None:  # every key visible to every query: one call
            self.groups = [_group_items([_Item(0, lq, 0, lk)], False)]
        else:
            s = mask.block_states(lq, lk, block_q, block_k, torch.device("cpu"))
            # Over heads: a tile is skipped if empty for every head, unmasked if full for all.
            merged = torch.where((s == EMPTY).all(1), EMPTY,
                                 torch.where((s == FULL).all(1), FULL, 1))  # (B|1, nQ, nK)
            self.groups = [_plan(st, block_q, block_k, lq, lk, self.relative)
                           for st in merged.tolist()]
        self._masks: dict[tuple[int, int], tuple[Tensor, Tensor | None]] = {}

    def for_backward(self) -> FusedPlan:
        """The plan the backward runs: this one, except that a band runs in blocks of
        ``band_block_backward`` rows (any split of the rows gives the exact gradients)."""
        backward_block = tuning.current().band_block_backward
        if self.band_block is None or self.band_block == backward_block:
            return self
        # Only a plan by structure has a band_block: the default by_structure=True rebuilds it.
        return FusedPlan(*self._args, band_block=backward_block)

    def for_batch(self, b: int) -> tuple[int, list[_Group]]:
        """(batch index the mask uses, kernel calls) for batch element ``b``."""
        mb = b if len(self.groups) > 1 else 0
        return mb, self.groups[mb]

    def mask_of(self, mb: int, index: int) -> tuple[Tensor | None, Tensor | None]:
        """Additive mask and rows-with-a-key of call ``index`` of mask batch ``mb``."""
        group = self.groups[mb][index]
        if not group.first.masked or self.mask is None:
            return None, None
        key = (mb, index)
        if key not in self._masks:
            self._masks[key] = _group_mask(self.mask, group, mb, self.lq, self.lk, self.bk,
                                           self.dtype, self.relative)
        return self._masks[key]


def make_plan(spec: AttentionSpec, block_q: int, block_k: int, *,
              by_structure: bool = True) -> FusedPlan:
    """The kernel calls for ``spec``. With ``by_structure``, a causal mask runs as one ``is_causal``
    call (plus the unmasked keys before it) and packed documents as one call per document;
    anything else (and everything without ``by_structure``) as runs of ``block_q`` x ``block_k``
    tiles."""
    return FusedPlan(spec.mask, spec.lq, spec.lk, block_q, block_k, spec.q.dtype,
                     by_structure=by_structure)


def _pieces(group: _Group, item_elements: int) -> list[tuple[int, int]]:
    """(first item, items) of consecutive runs of ``group`` with outputs of about
    ``piece_elements`` (a tuning constant), given one item's output elements.

    The kernel returns fresh zeroed tensors; for all windows of a long sequence at once that is
    hundreds of MiB, which malloc maps and zero-faults anew on every call. Pieces below glibc's
    mmap threshold (once it has adapted) reuse heap memory instead."""
    per_piece = max(1, tuning.current().piece_elements // item_elements)
    return [(i0, min(per_piece, group.n - i0)) for i0 in range(0, group.n, per_piece)]


_MaskPart = TypeVar("_MaskPart", Tensor, Tensor | None)


def _mask_rows(mask: _MaskPart, i0: int, n: int) -> _MaskPart:
    """The part of a group's (n|1, ...) mask or row flags for items [i0, i0 + n)."""
    return mask if mask is None or mask.shape[0] == 1 else mask[i0:i0 + n]


def fused_forward(spec: AttentionSpec, plan: FusedPlan) -> tuple[Tensor, Tensor]:
    """Output (B, Hq, Lq, Dv) and row log-sum-exp (B, Hq, Lq), ``-inf`` for rows with no key."""
    q = spec.q
    k, v = expand_kv(spec.k, spec.heads), expand_kv(spec.v, spec.heads)  # (B, H, Lk, D|Dv)
    # The output is stored (B, Lq, H, Dv), the layout the kernel writes its own outputs in: a
    # call's rows land with one contiguous copy, and merging heads afterwards is free.
    rows_first = torch.zeros(spec.batch, spec.lq, spec.heads, v.shape[-1], dtype=q.dtype)
    out = rows_first.transpose(1, 2)  # (B, H, Lq, Dv) view
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype)  # (B, H, Lq)
    for b in range(spec.batch):
        mb, groups = plan.for_batch(b)
        for index, g in enumerate(groups):
            f = g.first
            additive, row_has_key = plan.mask_of(mb, index)
            for i0, n in _pieces(g, spec.heads * f.q_len * v.shape[-1]):
                q0, k0 = f.q0 + i0 * f.q_len, f.k0 + i0 * g.k_step
                o, l = cpu_flash.flash_forward(
                    _windows(q[b], q0, n, f.q_len, f.q_len),
                    _windows(k[b], k0, n, g.k_step, f.k_len),
                    _windows(v[b], k0, n, g.k_step, f.k_len),
                    causal=f.causal, attn_mask=_mask_rows(additive, i0, n),
                    scale=spec.scale)  # (n, H, q, Dv), (n, H, q)
                if row_has_key is not None:  # the kernel gives lse 0 to rows with no key
                    l = l.masked_fill(~_mask_rows(row_has_key, i0, n), float("-inf"))
                r0, r1 = q0, q0 + n * f.q_len
                o = o.transpose(1, 2).reshape(-1, o.shape[1], o.shape[-1])  # (n*q, H, Dv) view
                l = l.transpose(0, 1).reshape(l.shape[1], -1)  # (H, n*q)
                if f.level == 0:
                    rows_first[b, r0:r1] = o
                    lse[b, :, r0:r1] = l
                else:
                    _merge_into(rows_first[b, r0:r1], lse[b, :, r0:r1].T, o, l.T)
    return out, lse


def _merge_into(acc: Tensor, acc_lse: Tensor, new: Tensor, new_lse: Tensor) -> None:
    """acc, acc_lse <- exact softmax merge of two partial results over disjoint key sets.

    acc / new (..., Dv), acc_lse / new_lse their leading dims (any matching layout)."""
    total = torch.logaddexp(acc_lse, new_lse)
    safe = finite_or(total)
    w_acc = torch.exp(acc_lse - safe)[..., None]  # 0 where a part saw no key
    w_new = torch.exp(new_lse - safe)[..., None]
    acc.mul_(w_acc).add_(new * w_new)
    acc_lse.copy_(total)


def fused_backward(spec: AttentionSpec, plan: FusedPlan, out: Tensor, lse: Tensor,
                   grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """dq (B, Hq, Lq, D), dk (B, Hkv, Lk, D), dv (B, Hkv, Lk, Dv) from the global out and lse."""
    q = spec.q
    k, v = expand_kv(spec.k, spec.heads), expand_kv(spec.v, spec.heads)  # (B, H, Lk, D|Dv)
    # Rows with no key: lse +inf makes their P = exp(S - lse) exactly 0, so no gradient.
    lse = finite_or(lse, float("inf"))
    plan = plan.for_backward()
    dq = torch.zeros_like(q)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    for b in range(spec.batch):
        mb, groups = plan.for_batch(b)
        for index, g in enumerate(groups):
            f = g.first
            additive, _ = plan.mask_of(mb, index)
            for i0, n in _pieces(g, spec.heads * f.k_len * q.shape[-1]):
                q0, k0 = f.q0 + i0 * f.q_len, f.k0 + i0 * g.k_step
                gq, gk, gv = cpu_flash.flash_backward(
                    _windows(grad_out[b], q0, n, f.q_len, f.q_len),
                    _windows(q[b], q0, n, f.q_len, f.q_len),
                    _windows(k[b], k0, n, g.k_step, f.k_len),
                    _windows(v[b], k0, n, g.k_step, f.k_len),
                    _windows(out[b], q0, n, f.q_len, f.q_len),
                    _windows(lse[b, :, :, None], q0, n, f.q_len, f.q_len)[..., 0],
                    causal=f.causal, scale=spec.scale,
                    attn_mask=_mask_rows(additive, i0, n))
                dq[b, :, q0:q0 + n * f.q_len] += gq.transpose(0, 1).reshape(
                    gq.shape[1], -1, gq.shape[-1])
                if n == 1:
                    dk[b, :, k0:k0 + f.k_len] += gk[0]
                    dv[b, :, k0:k0 + f.k_len] += gv[0]
                else:
                    keys = (k0 + g.k_step * torch.arange(n)[:, None]
                            + torch.arange(f.k_len)).flatten()  # (n*k,)
                    dk[b].index_add_(1, keys, gk.transpose(0, 1).flatten(1, 2))
                    dv[b].index_add_(1, keys, gv.transpose(0, 1).flatten(1, 2))
    if spec.kv_heads != spec.heads:  # GQA: the expanded heads of one kv head add up
        groups_per_kv = spec.heads // spec.kv_heads
        dk = dk.unflatten(1, (spec.kv_heads, groups_per_kv)).sum(2)
        dv = dv.unflatten(1, (spec.kv_heads, groups_per_kv)).sum(2)
    return dq, dk, dv
