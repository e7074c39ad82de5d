"""Additive score modifications: ALiBi, T5-style relative position buckets, dense biases.

A bias adds ``bias[b, h, i, j]`` to the scaled score of query ``i`` and key ``j`` before the
softmax (and before ``softcap``). Like masks, a bias is evaluated on index tensors, so a tiled
backend computes only the tiles it visits and FlexAttention gets a ``score_mod``.

Shape legend: B batch, H heads, Lq / Lk query / key length, tq / tk tile lengths.

Plain PyTorch equivalent of ``attention(q, k, v, bias=b)``::

    scores = (q @ k.transpose(-1, -2)) * scale + b.dense(Lq, Lk)   # (B, H, Lq, Lk)
    out = torch.softmax(scores, -1) @ v
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from attnkit.functional.indexing import index_grid

__all__ = ["Bias", "RelativeBucketBias", "SpanRampBias", "alibi", "alibi_slopes", "dense",
           "relative_buckets"]


class Bias(ABC):
    """An additive score bias over (batch, head, query, key)."""

    batch_size: int | None = None  # None: same for every sequence
    num_heads: int | None = None  # None: same for every head

    @abstractmethod
    def values(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int,
               tensors: Sequence[Tensor] | None = None) -> Tensor:
        """Bias on broadcastable index tensors. ``tensors`` replaces :meth:`tensors` (autograd)."""

    def tensors(self) -> tuple[Tensor, ...]:
        """Tensors the bias depends on and may need gradients for (learned tables, dense biases)."""
        return ()

    def tile(self, q_idx: Tensor, k_idx: Tensor, lq: int, lk: int,
             tensors: Sequence[Tensor] | None = None) -> Tensor:
        """Bias for query positions ``q_idx`` (tq,) and keys ``k_idx`` (tk,): (B|1, H|1, tq, tk)."""
        b, h, q, k = index_grid(q_idx, k_idx, self.batch_size or 1, self.num_heads or 1)
        return self.values(b, h, q, k, lq, lk, tensors)

    def dense(self, lq: int, lk: int, device: torch.device | None = None) -> Tensor:
        """The full bias, (B|1, H|1, Lq, Lk)."""
        return self.tile(torch.arange(lq, device=device), torch.arange(lk, device=device), lq, lk)

    def score_mod(self, lq: int, lk: int) -> Callable[[Tensor, Tensor, Tensor, Tensor, Tensor],
                                                       Tensor]:
        """A FlexAttention ``score_mod(score, b, h, q_idx, kv_idx)`` adding this bias."""

        def mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return score + self.values(b, h, q_idx, kv_idx, lq, lk).to(score.dtype)

        return mod

    def on_device(self, device: torch.device) -> Bias:
        """This bias with its fixed tensors on ``device`` (see ``Mask.on_device``); learned
        modules stay where their parameters are (move them with ``module.to``)."""
        return self

    def check_shape(self, batch: int, heads: int, lq: int, lk: int) -> None:
        if self.batch_size not in (None, 1, batch):
            raise ValueError(f"bias {self!r} is for batch size {self.batch_size}, q has {batch}")
        if self.num_heads not in (None, 1, heads):
            raise ValueError(f"bias {self!r} has {self.num_heads} heads but q has {heads} heads; "
                             f"build it with num_heads={heads}")
        self._check_lengths(lq, lk)

    def _check_lengths(self, lq: int, lk: int) -> None:
        """Raise ValueError if a materialized bias does not cover Lq queries and Lk keys
        (biases computed from positions apply to any lengths)."""
        return None  # a hook: the classes that hold tensors check them

    def __add__(self, other: Bias) -> Bias:
        return _SumBias(self, other)


class _SumBias(Bias):
    def __init__(self, left: Bias, right: Bias) -> None:
        self.left, self.right = left, right
        self.batch_size = left.batch_size if left.batch_size not in (None, 1) else right.batch_size
        self.num_heads = left.num_heads if left.num_heads not in (None, 1) else right.num_heads
        self._split = len(left.tensors())

    def tensors(self) -> tuple[Tensor, ...]:
        return self.left.tensors() + self.right.tensors()

    def check_shape(self, batch: int, heads: int, lq: int, lk: int) -> None:
        self.left.check_shape(batch, heads, lq, lk)
        self.right.check_shape(batch, heads, lq, lk)

    def on_device(self, device: torch.device) -> Bias:
        left, right = self.left.on_device(device), self.right.on_device(device)
        return self if left is self.left and right is self.right else _SumBias(left, right)

    def values(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int,
               tensors: Sequence[Tensor] | None = None) -> Tensor:
        lt = None if tensors is None else tensors[: self._split]
        rt = None if tensors is None else tensors[self._split :]
        return (self.left.values(b, h, q, k, lq, lk, lt)
                + self.right.values(b, h, q, k, lq, lk, rt))

    def __repr__(self) -> str:
        return f"({self.left!r} + {self.right!r})"


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al., 2022): a geometric sequence starting at 2^(-8/n).

    For a head count that is not a power of two, take the slopes of the nearest smaller power of
    two ``m`` and add every other slope of ``2m`` heads, as the paper prescribes.
    """
    if num_heads < 1:
        raise ValueError(f"alibi needs num_heads >= 1, got {num_heads}")

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    m = 2 ** math.floor(math.log2(num_heads))
    # For a power of two (m == num_heads) the slice below is empty: the geometric slopes alone.
    slopes = geometric(m) + geometric(2 * m)[0::2][: num_heads - m]
    return torch.tensor(slopes, dtype=torch.float64)


class _Alibi(Bias):
    def __init__(self, num_heads: int, offset: int | None) -> None:
        self.num_heads = num_heads
        self.offset = offset
        self.slopes = alibi_slopes(num_heads)

    def on_device(self, device: torch.device) -> Bias:
        if self.slopes.device == device:
            return self
        moved = copy.copy(self)
        moved.slopes = self.slopes.to(device)
        return moved

    def values(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int,
               tensors: Sequence[Tensor] | None = None) -> Tensor:
        off = lk - lq if self.offset is None else self.offset
        # The slopes are float64, so is their product with the integer distances: float64 calls
        # are exact (non-power-of-2 head counts have irrational slopes); callers cast to the
        # score dtype.
        slopes = self.slopes.to(device=q.device)
        return -slopes[h] * (q + off - k).abs()

    def __repr__(self) -> str:
        return f"alibi({self.num_heads})"


def alibi(num_heads: int, offset: int | None = None) -> Bias:
    """ALiBi: ``-slope_h * |i - j|`` with the paper's slopes; positions bottom-right aligned.

    Under a causal mask this is exactly the paper's ``slope_h * (j - i)`` for ``j <= i``.
    """
    return _Alibi(num_heads, offset)


class _DenseBias(Bias):
    def __init__(self, tensor: Tensor) -> None:
        if not tensor.is_floating_point():
            raise ValueError(f"dense bias must be floating point, got {tensor.dtype}; "
                             f"use masks.dense() for boolean masks")
        if tensor.dim() < 2 or tensor.dim() > 4:
            raise ValueError(f"dense bias must have 2 to 4 dims (.., Lq, Lk), got shape "
                             f"{tuple(tensor.shape)}")
        self.lengths = tuple(tensor.shape[-2:])  # (Lq, Lk) it was built for
        while tensor.dim() < 4:
            tensor = tensor.unsqueeze(0)
        self.tensor = tensor  # (B|1, H|1, Lq, Lk)
        self.batch_size, self.num_heads = tensor.shape[0], tensor.shape[1]

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.tensor,)

    def on_device(self, device: torch.device) -> Bias:
        # .to() is differentiable: gradients still reach the caller's tensor.
        return self if self.tensor.device == device else _DenseBias(self.tensor.to(device))

    def _check_lengths(self, lq: int, lk: int) -> None:
        if self.lengths != (lq, lk):
            raise ValueError(f"dense bias is {self.lengths} but attention is ({lq}, {lk}) "
                             f"(Lq, Lk)")

    def values(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int,
               tensors: Sequence[Tensor] | None = None) -> Tensor:
        self._check_lengths(lq, lk)
        t = self.tensor if tensors is None else tensors[0]  # replacements have its shape
        bb = b if t.shape[0] > 1 else torch.zeros_like(b)
        hh = h if t.shape[1] > 1 else torch.zeros_like(h)
        return t[bb, hh, q, k]

    def __repr__(self) -> str:
        return f"dense_bias({tuple(self.tensor.shape)})"


def dense(tensor: Tensor) -> Bias:
    """A materialized float bias broadcastable to (B, H, Lq, Lk); may require grad."""
    return _DenseBias(tensor)


def relative_position_bucket(relative: Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Tensor:
    """T5 buckets: exact buckets for small distances, log-spaced ones up to ``max_distance``.

    ``relative`` = key position - query position. Returns bucket ids in ``[0, num_buckets)``.
    """
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # future keys share bucket 0
    exact = num_buckets // 2
    is_small = distance < exact
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (num_buckets - exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(is_small, distance, large)


class RelativeBucketBias(nn.Module, Bias):
    """Learned T5-style relative position bias: one scalar per (bucket, head), initialised from
    N(0, 0.02^2) so that a fresh module barely changes the scores."""

    def __init__(self, num_heads: int, *, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True) -> None:
        super().__init__()
        if num_buckets < 4 or max_distance <= num_buckets // 2:
            raise ValueError(f"need num_buckets >= 4 and max_distance > num_buckets // 2, got "
                             f"num_buckets={num_buckets}, max_distance={max_distance}")
        self.num_heads = num_heads
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.bidirectional = bidirectional
        self.table = nn.Parameter(torch.randn(num_buckets, num_heads) * 0.02)

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.table,)

    def values(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int,
               tensors: Sequence[Tensor] | None = None) -> Tensor:
        table = self.table if tensors is None else tensors[0]
        buckets = relative_position_bucket(k - (q + lk - lq), self.bidirectional,
                                           self.num_buckets, self.max_distance)
        return table[buckets, h]

    def forward(self, lq: int, lk: int) -> Tensor:
        """The dense bias (1, H, Lq, Lk)."""
        return self.dense(lq, lk, self.table.device)

    def __repr__(self) -> str:  # nn.Module's repr would hide the bias parameters
        return (f"relative_buckets(num_heads={self.num_heads}, num_buckets={self.num_buckets}, "
                f"max_distance={self.max_distance}, bidirectional={self.bidirectional})")

    __hash__ = nn.Module.__hash__


def relative_buckets(num_heads: int, *, num_buckets: int = 32, max_distance: int = 128,
                     bidirectional: bool = True) -> RelativeBucketBias:
    """A learned T5-style relative position bias module (pass it as ``bias=``)."""
    return RelativeBucketBias(num_heads, num_buckets=num_buckets, max_distance=max_distance,
                              bidirectional=bidirectional)


class SpanRampBias(Bias):
    """Adaptive span's soft ramp (Sukhbaatar et al., 2019) as a score bias: ``log m_z(|i - j|)``
    per head, ``m_z(x) = clamp((R + z_h - x) / R, 0, 1)`` with ``z_h = clamp(f_h, 0, 1) * max_span``
    (``-inf`` where the ramp is 0). ``span_fraction`` (H,) may require grad.

    :func:`attnkit.engine.span_ramp_attention` runs it over the band the ramp leaves open.
    """

    def __init__(self, span_fraction: Tensor, max_span: int, ramp: int) -> None:
        self.span_fraction = span_fraction  # (H,) learned, clamped to [0, 1] when used
        self.max_span, self.ramp = max_span, ramp
        self.num_heads = int(span_fraction.shape[0])

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.span_fraction,)

    def values(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int,
               tensors: Sequence[Tensor] | None = None) -> Tensor:
        fraction = self.span_fraction if tensors is None else tensors[0]
        span = fraction.clamp(0.0, 1.0)[h] * self.max_span  # (1, H, 1, 1)
        distance = (q + (lk - lq) - k).abs()  # integer; promoted to span's dtype below
        # Not clamped below: where the ramp is <= 0 the bias is -inf whatever its value.
        ramp = ((self.ramp + span - distance) / self.ramp).clamp(max=1.0)
        positive = ramp > 0
        # The bias is -inf where the ramp is <= 0; the inner where keeps the gradient finite there
        # (no inf * 0 or NaN from the log of a value <= 0).
        return torch.where(positive, torch.log(torch.where(positive, ramp, 1.0)), -math.inf)

    def __repr__(self) -> str:
        return f"span_ramp(heads={self.num_heads}, max_span={self.max_span}, ramp={self.ramp})"
