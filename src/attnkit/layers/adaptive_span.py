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
``< max_h z_h + R`` (capped at ``max_span - 1``) is computed: queries are taken in blocks of
``block`` rows, each attending (through ``F.scaled_dot_product_attention`` with the ramp as an
additive mask) only to the keys its band reaches, so compute and memory grow with
``L * (block + 2 * window)``, not with L^2. Training on CPU runs the blocks on torch's fused
flash kernel forward and backward, with the span's gradient taken from the ramp strips only
(:mod:`attnkit.backends.span_band`); elsewhere each block is recomputed in the backward pass
(activation checkpointing), so memory stays linear in L too. The distance is
``|i - j|`` with the usual bottom-right alignment (a causal mask from the caller gives the
paper's language-model setting). The paper divides by ``sum + 1e-8``; this layer renormalizes
exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.engine import current_tuning, span_ramp_attention
from attnkit.functional import masks
from attnkit.functional.bias import SpanRampBias
from attnkit.functional.masks import Mask
from attnkit.functional.math import attention_weights, validate
from attnkit.layers.base import reject_options
from attnkit.layers.kv_cache import RollingKVCache
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["AdaptiveSpanAttention", "SpanRampBias"]


class AdaptiveSpanAttention(MultiHeadAttention):
    """Multi-head attention with a learned soft span per head (Sukhbaatar et al., 2019).

    Options (besides :class:`MultiHeadAttention`'s projections, GQA, RoPE, QK-norm, dropout and
    StaticKVCache, same defaults; ``alibi`` and ``softcap`` are not supported):
        max_span: largest span S any head may reach (default 1024).
        ramp: width R of the soft ramp (default 32, the paper's value).
        span_init: initial span as a fraction of ``max_span`` (default 0.0, as the authors' code:
            every head starts seeing R keys and grows as the loss asks).
        span_loss: coefficient of the span penalty (default 2e-6, the paper's character-LM value).
        block: query rows per block of the banded computation (default 256, tuning
            ``span_block``).
    :meth:`auxiliary_loss` returns the span penalty; :meth:`current_window` the computed band.
    """

    def __init__(self, dim: int, num_heads: int, *, max_span: int = 1024, ramp: int = 32,
                 span_init: float = 0.0, span_loss: float = 2e-6, block: int | None = None,
                 **mha_options: Any) -> None:
        reject_options("adaptive_span", mha_options, ("alibi", "softcap"),
                       "the span ramp is its score modification")
        super().__init__(dim, num_heads, **mha_options)
        if max_span < 1 or ramp < 1:
            raise ValueError(f"max_span and ramp must be >= 1, got max_span={max_span}, "
                             f"ramp={ramp}")
        if not 0.0 <= span_init <= 1.0:
            raise ValueError(f"span_init is a fraction of max_span in [0, 1], got {span_init}")
        block = current_tuning().span_block if block is None else block
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.max_span, self.ramp, self.span_loss, self.block = max_span, ramp, span_loss, block
        self.span_fraction = nn.Parameter(torch.full((self.layout.num_heads,), float(span_init)))

    def spans(self) -> Tensor:
        """Current span of every head in tokens, (H,)."""
        return self.span_fraction.detach().clamp(0.0, 1.0) * self.max_span

    def current_window(self) -> int:
        """Largest distance with a nonzero ramp over all heads: the band actually computed."""
        reach = math.ceil(float(self.spans().max()) + self.ramp) - 1
        return max(0, min(self.max_span - 1, reach))

    def score_bias(self) -> SpanRampBias:
        return SpanRampBias(self.span_fraction, self.max_span, self.ramp)

    def attend_heads(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                     cache: Any = None) -> Tensor:
        if isinstance(cache, RollingKVCache):
            raise ValueError("adaptive_span needs contiguous key positions for its distance "
                             "ramp; use StaticKVCache (the span already bounds the keys used)")
        q, k, v, mask = self.prepare(x, context, mask=mask, cache=cache)  # (B, H|Hkv, L|S, Dh)
        window = self.current_window()
        dropout_p = self.dropout if self.training else 0.0
        out = span_ramp_attention(q, k, v, self.score_bias(), window=window, mask=mask,
                                  block=self.block, dropout_p=dropout_p)

        def weights() -> Tensor:
            band = masks.sliding_window(window, window)
            spec = validate(q, k, v, mask=band if mask is None else mask & band,
                            bias=self.score_bias(), scale=None, softcap=None, dropout_p=0.0)
            return attention_weights(spec)

        return self.probe(out, v, weights)

    def auxiliary_loss(self) -> Tensor:
        """span_loss * max_span * mean_h clamp(f_h, 0, 1): pushes spans down."""
        return self.span_loss * self.max_span * self.span_fraction.clamp(0.0, 1.0).mean()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, max_span={self.max_span}, ramp={self.ramp}, "
                f"span_loss={self.span_loss}")
