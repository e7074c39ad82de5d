"""Adaptive attention span (Sukhbaatar et al., 2019, "Adaptive Attention Span in Transformers",
arXiv:1905.07799).

Shape legend: B batch, H heads, L / S query / key length, Dh head dim.

Each head h learns a span z_h (stored as a fraction of ``max_span``, z_h = f_h * max_span) and
weights attention with a soft ramp over the distance x between query and key::

    m_z(x)  = clamp((R + z - x) / R, 0, 1)               # 1 up to z, linear to 0 at z + R
    a_ij    = m_z(x_ij) exp(s_ij) / sum_j' m_z(x_ij') exp(s_ij')      # renormalized weights
            = softmax_j(s_ij + log m_z(x_ij))            # so: an additive score bias
    loss    = span_loss * max_span * mean_h f_h           # the paper's lambda / M sum_i z_i

Keys with ``m = 0`` (x >= z + R) get weight zero, so only the band of distance
``< max_h z_h + R`` (capped at ``max_span - 1``) is computed: the layer passes that band as a
``sliding_window`` mask, and the engine's blocked backend visits only its tiles, so compute grows
with the current span, not with L^2. The distance is ``|i - j|`` with the usual bottom-right
alignment (a causal mask from the caller gives the paper's language-model setting). The paper
divides by ``sum + 1e-8``; this layer renormalizes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.functional import masks
from attnkit.functional.bias import Bias
from attnkit.functional.masks import Mask
from attnkit.layers.kv_cache import RollingKVCache
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["AdaptiveSpanAttention", "SpanRampBias"]


class SpanRampBias(Bias):
    """``log m_z(|i - j|)`` per head (``-inf`` where the ramp is 0), as an engine score bias."""

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
        distance = (q + (lk - lq) - k).abs().to(span.dtype)
        ramp = ((self.ramp + span - distance) / self.ramp).clamp(0.0, 1.0)
        positive = ramp > 0
        # log of 0 is -inf; the inner where keeps its gradient finite (no inf * 0).
        return torch.where(positive, torch.log(torch.where(positive, ramp, 1.0)),
                           float("-inf"))

    def __repr__(self) -> str:
        return f"span_ramp(heads={self.num_heads}, max_span={self.max_span}, ramp={self.ramp})"


class AdaptiveSpanAttention(MultiHeadAttention):
    """Multi-head attention with a learned soft span per head (Sukhbaatar et al., 2019).

    Options (besides :class:`MultiHeadAttention`'s projections, GQA, RoPE, QK-norm, dropout and
    StaticKVCache, same defaults; ``alibi`` is not supported):
        max_span: largest span S any head may reach (default 1024).
        ramp: width R of the soft ramp (default 32, the paper's value).
        span_init: initial span as a fraction of ``max_span`` (default 0.0, as the authors' code:
            every head starts seeing R keys and grows as the loss asks).
        span_loss: coefficient of the span penalty (default 2e-6, the paper's character-LM value).
    :meth:`auxiliary_loss` returns the span penalty; :meth:`current_window` the computed band.
    """

    def __init__(self, dim: int, num_heads: int, *, max_span: int = 1024, ramp: int = 32,
                 span_init: float = 0.0, span_loss: float = 2e-6, **mha_options: Any) -> None:
        if mha_options.get("alibi"):
            raise ValueError("adaptive_span does not support alibi: the span ramp is its "
                             "positional bias")
        super().__init__(dim, num_heads, **mha_options)
        if max_span < 1 or ramp < 1:
            raise ValueError(f"max_span and ramp must be >= 1, got max_span={max_span}, "
                             f"ramp={ramp}")
        if not 0.0 <= span_init <= 1.0:
            raise ValueError(f"span_init is a fraction of max_span in [0, 1], got {span_init}")
        self.max_span, self.ramp, self.span_loss = max_span, ramp, span_loss
        self.span_fraction = nn.Parameter(torch.full((self.layout.num_heads,), float(span_init)))

    def spans(self) -> Tensor:
        """Current span of every head in tokens, (H,)."""
        return self.span_fraction.detach().clamp(0.0, 1.0) * self.max_span

    def current_window(self) -> int:
        """Largest distance with a nonzero ramp over all heads: the band actually computed."""
        reach = math.ceil(float(self.spans().max()) + self.ramp) - 1
        return max(0, min(self.max_span - 1, reach))

    def score_bias(self) -> Bias:
        return SpanRampBias(self.span_fraction, self.max_span, self.ramp)

    def attend_heads(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                     cache: Any = None) -> Tensor:
        if isinstance(cache, RollingKVCache):
            raise ValueError("adaptive_span needs contiguous key positions for its distance "
                             "ramp; use StaticKVCache (the span already bounds the keys used)")
        window = self.current_window()
        band = masks.sliding_window(window, window)
        return super().attend_heads(x, context, mask=band if mask is None else mask & band,
                                    cache=cache)

    def auxiliary_loss(self) -> Tensor:
        """span_loss * max_span * mean_h clamp(f_h, 0, 1): pushes spans down."""
        return self.span_loss * self.max_span * self.span_fraction.clamp(0.0, 1.0).mean()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, max_span={self.max_span}, ramp={self.ramp}, "
                f"span_loss={self.span_loss}")
