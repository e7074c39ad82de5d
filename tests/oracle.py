"""An independent float64 oracle for attention: definitions written from the papers and docs.

Nothing here calls attnkit's ``validate``, ``Mask.dense``/``allowed``, ``Bias.dense``/``values``
or any backend. A mask or bias is described once by a *definition* object of this module: the
definition builds the attnkit object through the public constructors (``attnkit.masks``,
``attnkit.bias``) for the code under test, and computes its own dense matrix from the
documented meaning for the oracle. A bug in the library's mask, bias, scale or GQA code therefore
shows up as a disagreement instead of going into both sides of the comparison.

Definitions (``i`` query row, ``j`` key column, ``off`` the alignment of query ``i`` to key
position ``i + off``, by default ``Lk - Lq``: bottom-right, so the last query is the last key):

- causal(offset):             ``j <= i + off``
- window(left, right, off):   ``i + off - left <= j <= i + off + right``
- padding(lengths):           ``j < lengths[b]``; padding(valid (B, Lk) bool): ``valid[b, j]``
- document(q_ids, kv_ids):    ``q_ids[b, i] == kv_ids[b, j]`` (kv_ids defaults to q_ids)
- sink(n):                    ``j < n``
- ALiBi (Press et al. 2022):  ``-m_h * |i + off - j|``, slopes ``m_h = 2^(-8 (h+1) / n)`` for a
  power-of-two ``n``; otherwise the slopes of the nearest smaller power of two ``p`` followed by
  every other slope of ``2p`` heads (the paper's released ``get_slopes``)
- T5 buckets (Raffel et al. 2020, mesh-tensorflow's ``_relative_position_bucket``): relative
  position ``r = j - (i + Lk - Lq)``; see :func:`t5_bucket`
- default scale ``1 / sqrt(D)`` with ``D`` the query/key head dim (not the value head dim)
- softcap ``c * tanh(s / c)`` after the bias, before the mask
- GQA: query head ``h`` reads key/value head ``h // (Hq / Hkv)``
- a query row with no allowed key outputs zeros

Shape legend: B batch, Hq / Hkv query / key-value heads, Lq / Lk lengths, D / Dv head dims.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from attnkit import bias as biases
from attnkit import masks

__all__ = [
    "BiasDef", "MaskDef", "alibi", "alibi_slopes", "attention", "attnkit_options", "buckets",
    "causal", "dense_bias", "dense_mask", "document", "full", "padding", "sink", "t5_bucket",
    "window",
]


def _positions(lq: int, lk: int) -> tuple[Tensor, Tensor]:
    """Query rows (Lq, 1) and key columns (1, Lk) as int64 index grids."""
    return torch.arange(lq).view(lq, 1), torch.arange(lk).view(1, lk)


# -- masks ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskDef:
    """A mask stated twice: ``build()`` the attnkit object, ``allowed()`` its meaning."""

    build: Callable[[], masks.Mask]  # the object under test, from public constructors
    meaning: Callable[[int, int, int, int], Tensor]  # (B, H, Lq, Lk) -> bool, broadcastable
    text: str

    def allowed(self, batch: int, heads: int, lq: int, lk: int) -> Tensor:
        """(B, H, Lq, Lk) bool: True where query i may attend key j."""
        return self.meaning(batch, heads, lq, lk).expand(batch, heads, lq, lk)

    def __and__(self, other: MaskDef) -> MaskDef:
        return MaskDef(lambda: self.build() & other.build(),
                       lambda *s: self.meaning(*s) & other.meaning(*s),
                       f"({self.text} & {other.text})")

    def __or__(self, other: MaskDef) -> MaskDef:
        return MaskDef(lambda: self.build() | other.build(),
                       lambda *s: self.meaning(*s) | other.meaning(*s),
                       f"({self.text} | {other.text})")

    def __invert__(self) -> MaskDef:
        return MaskDef(lambda: ~self.build(), lambda *s: ~self.meaning(*s), f"~{self.text}")

    def __repr__(self) -> str:
        return self.text


def _aligned(offset: int | None, lq: int, lk: int) -> int:
    return lk - lq if offset is None else offset


def full() -> MaskDef:
    return MaskDef(masks.full, lambda b, h, lq, lk: torch.ones(1, 1, lq, lk, dtype=torch.bool),
                   "full")


def causal(offset: int | None = None) -> MaskDef:
    def meaning(b: int, h: int, lq: int, lk: int) -> Tensor:
        i, j = _positions(lq, lk)
        return (j <= i + _aligned(offset, lq, lk))[None, None]
    return MaskDef(lambda: masks.causal(offset), meaning, f"causal({offset})")


def window(left: int, right: int = 0, offset: int | None = None) -> MaskDef:
    def meaning(b: int, h: int, lq: int, lk: int) -> Tensor:
        i, j = _positions(lq, lk)
        centre = i + _aligned(offset, lq, lk)
        return ((j >= centre - left) & (j <= centre + right))[None, None]
    return MaskDef(lambda: masks.sliding_window(left, right, offset), meaning,
                   f"window({left}, {right}, {offset})")


def sink(count: int) -> MaskDef:
    def meaning(b: int, h: int, lq: int, lk: int) -> Tensor:
        _, j = _positions(lq, lk)
        return (j < count).expand(lq, lk)[None, None]
    return MaskDef(lambda: masks.sink(count), meaning, f"sink({count})")


def padding(lengths_or_valid: Sequence[int] | Tensor) -> MaskDef:
    """Key padding by lengths (B,) (a list or an int tensor) or by a (B, Lk) bool key mask."""
    given = lengths_or_valid

    def meaning(b: int, h: int, lq: int, lk: int) -> Tensor:
        t = torch.as_tensor(given)
        if t.dtype == torch.bool:
            return t.view(b, 1, 1, lk).expand(b, 1, lq, lk)
        _, j = _positions(lq, lk)
        return torch.stack([(j < int(n)).expand(lq, lk) for n in t.tolist()])[:, None]
    return MaskDef(lambda: masks.padding(given), meaning, "padding")


def document(q_ids: Tensor, kv_ids: Tensor | None = None) -> MaskDef:
    """Tokens attend within their document: ids (B, Lq) and (B, Lk)."""
    def meaning(b: int, h: int, lq: int, lk: int) -> Tensor:
        keys = q_ids if kv_ids is None else kv_ids
        return (q_ids.view(-1, 1, lq, 1) == keys.view(-1, 1, 1, lk))
    return MaskDef(lambda: masks.document(q_ids, kv_ids), meaning, "document")


def dense_mask(allowed: Tensor) -> MaskDef:
    """A boolean matrix broadcastable to (B, H, Lq, Lk)."""
    def meaning(b: int, h: int, lq: int, lk: int) -> Tensor:
        return allowed.view(*([1] * (4 - allowed.dim())), *allowed.shape)
    return MaskDef(lambda: masks.dense(allowed), meaning, f"dense{tuple(allowed.shape)}")


# -- biases ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BiasDef:
    """A score bias stated twice: ``build()`` the attnkit object, ``values()`` its meaning.

    ``leaves`` are the tensors that carry gradients (a learned table, a dense bias); ``values``
    takes float64 replacements for them so the oracle's gradients can be compared.
    """

    build: Callable[[], biases.Bias]
    meaning: Callable[[int, int, int, int, Sequence[Tensor]], Tensor]
    leaves: tuple[Tensor, ...] = field(default=())
    text: str = "bias"

    def values(self, batch: int, heads: int, lq: int, lk: int,
               leaves: Sequence[Tensor] | None = None) -> Tensor:
        """(B, H, Lq, Lk) float64."""
        used = [t.double() for t in self.leaves] if leaves is None else leaves
        return self.meaning(batch, heads, lq, lk, used).expand(batch, heads, lq, lk)

    def __add__(self, other: BiasDef) -> BiasDef:
        split = len(self.leaves)
        return BiasDef(lambda: self.build() + other.build(),
                       lambda b, h, lq, lk, t: (self.meaning(b, h, lq, lk, t[:split])
                                                + other.meaning(b, h, lq, lk, t[split:])),
                       self.leaves + other.leaves, f"({self.text} + {other.text})")

    def __repr__(self) -> str:
        return self.text


def alibi_slopes(num_heads: int) -> list[float]:
    """The paper's slopes: 2^(-8/n), 2^(-16/n), ... for n a power of two, else interleaved."""
    if math.log2(num_heads).is_integer():
        return [2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)]
    lower = 2 ** math.floor(math.log2(num_heads))
    return alibi_slopes(lower) + alibi_slopes(2 * lower)[0::2][: num_heads - lower]


def alibi(num_heads: int, offset: int | None = None) -> BiasDef:
    def meaning(b: int, h: int, lq: int, lk: int, _: Sequence[Tensor]) -> Tensor:
        i, j = _positions(lq, lk)
        distance = (i + _aligned(offset, lq, lk) - j).abs().double()
        slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float64)
        return -slopes.view(1, -1, 1, 1) * distance
    return BiasDef(lambda: biases.alibi(num_heads, offset), meaning, (),
                   f"alibi({num_heads}, {offset})")


def t5_bucket(relative: Tensor, bidirectional: bool, num_buckets: int,
              max_distance: int) -> Tensor:
    """T5's bucket of ``relative = key position - query position`` (int64 tensor).

    Bidirectional: half the buckets for keys after the query. Then half of the remaining buckets
    are exact distances 0 .. exact-1; larger distances share log-spaced buckets up to
    ``max_distance``, beyond which everything lands in the last bucket. Computed in float32 as
    the reference implementation does (bucket edges depend on it).
    """
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative > 0).long() * num_buckets
        n = relative.abs()
    else:
        n = torch.maximum(-relative, torch.zeros_like(relative))
    exact = num_buckets // 2
    logs = torch.log(n.float() / exact) / math.log(max_distance / exact)
    large = torch.minimum(exact + (logs * (num_buckets - exact)).long(),
                          torch.full_like(n, num_buckets - 1))
    return bucket + torch.where(n < exact, n, large)


def buckets(num_heads: int, *, num_buckets: int, max_distance: int, bidirectional: bool,
            generator: torch.Generator | None = None,
            dtype: torch.dtype = torch.float32) -> BiasDef:
    """A learned T5 bias with a random (not tiny) table; gradients flow into the table."""
    module = biases.relative_buckets(num_heads, num_buckets=num_buckets,
                                     max_distance=max_distance, bidirectional=bidirectional)
    with torch.no_grad():
        module.table.copy_(torch.randn(num_buckets, num_heads, generator=generator))
    module = module.to(dtype)

    def meaning(b: int, h: int, lq: int, lk: int, leaves: Sequence[Tensor]) -> Tensor:
        i, j = _positions(lq, lk)
        ids = t5_bucket(j - (i + lk - lq), bidirectional, num_buckets, max_distance)
        table = leaves[0]  # (num_buckets, H)
        return table[ids].permute(2, 0, 1)[None]  # (1, H, Lq, Lk)
    return BiasDef(lambda: module, meaning, (module.table,),
                   f"buckets({num_heads}, {num_buckets}, {max_distance}, {bidirectional})")


def dense_bias(tensor: Tensor) -> BiasDef:
    """A float tensor broadcastable to (B, H, Lq, Lk), possibly requiring grad."""
    def meaning(b: int, h: int, lq: int, lk: int, leaves: Sequence[Tensor]) -> Tensor:
        t = leaves[0]
        return t.view(*([1] * (4 - t.dim())), *t.shape)
    return BiasDef(lambda: biases.dense(tensor), meaning, (tensor,),
                   f"dense_bias{tuple(tensor.shape)}")


# -- the oracle -----------------------------------------------------------------------------------
def attention(q: Tensor, k: Tensor, v: Tensor, *, allowed: Tensor | None = None,
              bias: Tensor | None = None, scale: float | None = None,
              softcap: float | None = None) -> tuple[Tensor, Tensor]:
    """Float64 attention from the definitions: (out (B, Hq, Lq, Dv), weights (B, Hq, Lq, Lk)).

    ``allowed`` (B, Hq, Lq, Lk) bool and ``bias`` (B, Hq, Lq, Lk) float are dense matrices; the
    inputs are cast to float64 (gradients flow back through the casts).
    """
    q, k, v = q.double(), k.double(), v.double()
    heads, kv_heads = q.shape[1], k.shape[1]
    kv_of_head = torch.arange(heads) // (heads // kv_heads)  # GQA: h reads h // group
    k, v = k[:, kv_of_head], v[:, kv_of_head]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if bias is not None:
        scores = scores + bias.double()
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if allowed is None:
        allowed = torch.ones(scores.shape, dtype=torch.bool)
    allowed = allowed.expand(scores.shape)
    # Stable softmax over the allowed keys only; no -inf ever enters the arithmetic, so a row
    # with nothing allowed has weight 0 everywhere and finite gradients.
    kept = torch.where(allowed, scores, torch.zeros_like(scores))
    if scores.shape[-1] == 0:
        return scores @ v, scores
    top = torch.where(allowed, kept, torch.full_like(kept, -1e300)).amax(-1, keepdim=True)
    top = torch.where(allowed.any(-1, keepdim=True), top, torch.zeros_like(top)).detach()
    exp = torch.where(allowed, torch.exp(kept - top), torch.zeros_like(kept))
    total = exp.sum(-1, keepdim=True)
    weights = exp / torch.where(total > 0, total, torch.ones_like(total))
    return weights @ v, weights


def attnkit_options(options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``attnkit.attention``: definitions replaced by the built objects."""
    out = dict(options)
    if isinstance(out.get("mask"), MaskDef):
        out["mask"] = out["mask"].build()
    if isinstance(out.get("bias"), BiasDef):
        out["bias"] = out["bias"].build()
    return out
