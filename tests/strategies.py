"""Hypothesis strategies for attention tests: shapes, masks with their expected matrices, biases.

Every mask strategy returns the mask *and* the boolean matrix it should produce, computed here
from the definitions with plain index arithmetic (not through the mask classes), so mask code is
checked against an independent statement of what it means. ``mask_defs`` and ``bias_defs`` give
the same draws as definitions of the independent oracle (``tests/oracle.py``).

Shape legend: B batch, Hq / Hkv query / key-value heads, Lq / Lk lengths, D / Dv head dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import Tensor

import oracle
from attnkit import masks
from attnkit.functional.masks import Mask

#: Head dims that are not multiples of 8 on purpose, and 1.
HEAD_DIMS = [1, 3, 5, 8, 12]


@dataclass(frozen=True)
class Shape:
    batch: int  # B
    heads: int  # Hq
    kv_heads: int  # Hkv (divides Hq)
    lq: int  # query length
    lk: int  # key length
    dim: int  # D, q/k head dim
    dim_v: int  # Dv, value head dim

    def tensors(self, dtype: torch.dtype, seed: int) -> tuple[Tensor, Tensor, Tensor]:
        """Random q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv); never zeros."""
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(self.batch, self.heads, self.lq, self.dim, generator=g, dtype=dtype)
        k = torch.randn(self.batch, self.kv_heads, self.lk, self.dim, generator=g, dtype=dtype)
        v = torch.randn(self.batch, self.kv_heads, self.lk, self.dim_v, generator=g, dtype=dtype)
        return q, k, v


#: Lengths around the default tiles of the registered backends: blocked's fused path plans
#: 128 x 128 tiles (and bands of 32 / 128 rows), its pure loop 256 x 512.
TILE_EDGE_LENGTHS = [31, 32, 33, 127, 128, 129, 200, 255, 256, 257, 300]

#: How Lq compares with Lk: every property runs each relation, so neither is left to chance.
RELATIONS = ["lq<lk", "lq=lk", "lq>lk"]


@st.composite
def lengths(draw: st.DrawFn, max_len: int = 9, relation: str | None = None,
            long: bool = False) -> tuple[int, int]:
    """(Lq, Lk) with ``relation`` held; ``long`` draws around the default tile edges."""
    length = (st.sampled_from(TILE_EDGE_LENGTHS) | st.integers(100, 300)) if long else \
        st.integers(1, max_len)
    a, b = draw(length), draw(length)
    if relation is None:
        return a, b
    if relation == "lq=lk":
        return a, a
    if a == b:
        b = a + 1 if a < (300 if long else max_len) else a - 1
        if b < 1:  # max_len 1 cannot differ: the caller asked for the impossible
            raise ValueError(f"lengths up to {max_len} cannot satisfy {relation}")
    small, large = min(a, b), max(a, b)
    return (small, large) if relation == "lq<lk" else (large, small)


@st.composite
def shapes(draw: st.DrawFn, max_len: int = 9, relation: str | None = None,
           long: bool = False) -> Shape:
    """Random attention shapes, GQA / MQA included, length 1 included (short ones)."""
    kv_heads = draw(st.integers(1, 2 if long else 3))
    groups = draw(st.integers(1, 3))
    lq, lk = draw(lengths(max_len, relation, long))
    return Shape(batch=draw(st.integers(1, 2)), heads=kv_heads * groups, kv_heads=kv_heads,
                 lq=lq, lk=lk, dim=draw(st.sampled_from(HEAD_DIMS)),
                 dim_v=draw(st.sampled_from(HEAD_DIMS)))


def _grid(lq: int, lk: int) -> tuple[Tensor, Tensor]:
    return torch.arange(lq).view(1, 1, -1, 1), torch.arange(lk).view(1, 1, 1, -1)


def _generator(draw: st.DrawFn) -> torch.Generator:
    return torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))


PRIMITIVE_KINDS = ["full", "causal", "causal_offset", "window", "padding_lengths",
                   "padding_bool", "document", "dense", "sink"]


@st.composite
def primitive_masks(draw: st.DrawFn, batch: int, heads: int, lq: int, lk: int,
                    kinds: list[str] | None = None) -> tuple[Mask, Tensor]:
    """One mask of a random kind and its expected (B, Hq, Lq, Lk) bool matrix."""
    kind = draw(st.sampled_from(kinds or PRIMITIVE_KINDS))
    i, j = _grid(lq, lk)
    shape = (batch, heads, lq, lk)
    if kind == "full":
        return masks.full(), torch.ones(shape, dtype=torch.bool)
    if kind == "causal":  # bottom-right: query i sits at key position i + Lk - Lq
        return masks.causal(), (j <= i + lk - lq).expand(shape)
    if kind == "causal_offset":
        off = draw(st.integers(-3, 3))
        return masks.causal(offset=off), (j <= i + off).expand(shape)
    if kind == "window":
        left, right = draw(st.integers(0, 4)), draw(st.integers(0, 3))
        explicit = draw(st.booleans())
        off = draw(st.integers(-2, 2)) if explicit else lk - lq
        m = masks.sliding_window(left, right, offset=off if explicit else None)
        return m, ((j >= i + off - left) & (j <= i + off + right)).expand(shape)
    if kind == "sink":
        count = draw(st.integers(0, 3))
        return masks.sink(count), (j < count).expand(shape)
    g = _generator(draw)
    if kind == "padding_lengths":
        lengths = torch.randint(0, lk + 1, (batch,), generator=g)
        expected = j < lengths.view(-1, 1, 1, 1)
        as_list = draw(st.booleans())
        return masks.padding(lengths.tolist() if as_list else lengths), expected.expand(shape)
    if kind == "padding_bool":
        valid = torch.rand(batch, lk, generator=g) < 0.7
        return masks.padding(valid), valid.view(batch, 1, 1, lk).expand(shape)
    if kind == "document":
        q_ids = torch.randint(0, 3, (batch, lq), generator=g).sort(-1).values
        if lq == lk and draw(st.booleans()):
            return masks.document(q_ids), (q_ids[:, None, :, None] == q_ids[:, None, None, :]
                                           ).expand(shape)
        kv_ids = torch.randint(0, 3, (batch, lk), generator=g)
        expected = q_ids[:, None, :, None] == kv_ids[:, None, None, :]
        return masks.document(q_ids, kv_ids), expected.expand(shape)
    assert kind == "dense"
    b = draw(st.sampled_from([1, batch]))
    h = draw(st.sampled_from([1, heads]))
    allowed = torch.rand(b, h, lq, lk, generator=g) < 0.6
    squeeze = b == 1 and h == 1 and draw(st.booleans())  # a 2-D (Lq, Lk) mask
    return masks.dense(allowed[0, 0] if squeeze else allowed), allowed.expand(shape)


@st.composite
def composed_masks(draw: st.DrawFn, batch: int, heads: int, lq: int, lk: int,
                   depth: int = 2, kinds: list[str] | None = None) -> tuple[Mask, Tensor]:
    """Masks combined with ``&``, ``|`` and ``~`` up to ``depth``, with the expected matrix."""
    op = draw(st.sampled_from(["leaf", "and", "or", "not"] if depth > 0 else ["leaf"]))
    if op == "leaf":
        return draw(primitive_masks(batch, heads, lq, lk, kinds))
    a, ea = draw(composed_masks(batch, heads, lq, lk, depth - 1, kinds))
    if op == "not":
        return ~a, ~ea
    b, eb = draw(composed_masks(batch, heads, lq, lk, depth - 1, kinds))
    return (a & b, ea & eb) if op == "and" else (a | b, ea | eb)


BIAS_KINDS = ["alibi", "relative_buckets", "dense", "dense_grad", "sum"]


# -- oracle definitions: the same draws, stated for the independent oracle -------------------------
@st.composite
def mask_defs(draw: st.DrawFn, batch: int, heads: int, lq: int, lk: int,
              depth: int = 2, kinds: list[str] | None = None) -> oracle.MaskDef:
    """A composed mask as an oracle definition: the attnkit object and its independent matrix."""
    mask, expected = draw(composed_masks(batch, heads, lq, lk, depth, kinds))
    return oracle.MaskDef(lambda: mask, lambda *_: expected, repr(mask))


@st.composite
def bias_defs(draw: st.DrawFn, heads: int, lq: int, lk: int, dtype: torch.dtype = torch.float32,
              batch: int = 1, allow_sum: bool = True) -> oracle.BiasDef:
    """ALiBi, learned T5 buckets, dense (optionally learned) and sums, as oracle definitions."""
    kind = draw(st.sampled_from(BIAS_KINDS if allow_sum else BIAS_KINDS[:-1]))
    if kind == "alibi":
        return oracle.alibi(heads, offset=draw(st.none() | st.integers(-2, 2)))
    if kind == "relative_buckets":
        num_buckets = draw(st.integers(4, 12))
        return oracle.buckets(heads, num_buckets=num_buckets,
                              max_distance=draw(st.integers(num_buckets // 2 + 1, 20)),
                              bidirectional=draw(st.booleans()), generator=_generator(draw),
                              dtype=dtype)
    if kind == "sum":
        return oracle.alibi(heads) + draw(bias_defs(heads, lq, lk, dtype, batch, False))
    b = draw(st.sampled_from([1, batch]))
    h = draw(st.sampled_from([1, heads]))
    table = torch.randn(b, h, lq, lk, generator=_generator(draw), dtype=dtype)
    return oracle.dense_bias(table.requires_grad_(kind == "dense_grad"))
