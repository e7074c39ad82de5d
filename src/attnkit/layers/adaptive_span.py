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
(:mod:`attnkit.layers.span_band`); elsewhere each block is recomputed in the backward pass
(activation checkpointing), so memory stays linear in L too. The distance is
``|i - j|`` with the usual bottom-right alignment (a causal mask from the caller gives the
paper's language-model setting). The paper divides by ``sum + 1e-8``; this layer renormalizes
exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from attnkit.functional import masks
from attnkit.functional.bias import Bias
from attnkit.functional.masks import Mask
from attnkit.functional.math import attention_weights, expand_kv, validate
from attnkit.layers.base import reject_options
from attnkit.layers.kv_cache import RollingKVCache
from attnkit.layers.multihead import MultiHeadAttention
from attnkit.layers.span_band import fused_span_band, fused_span_supported, log_ramp_table

__all__ = ["AdaptiveSpanAttention", "SpanRampBias", "banded_span_attention", "log_ramp_table"]


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


def _block_log_ramp(table: Tensor, q_idx: Tensor, k_idx: Tensor) -> Tensor:
    """The ramp bias of one block, (1, H, C, K): one gather from the distance table."""
    window = table.shape[1] - 2
    distance = (q_idx[:, None] - k_idx[None, :]).abs().clamp(max=window + 1)  # (C, K)
    return table[:, distance].unsqueeze(0)


def _span_block(q: Tensor, k: Tensor, v: Tensor, table: Tensor, q_idx: Tensor, k_idx: Tensor,
                allowed: Tensor | None, dropout_p: float,
                log_ramp: Tensor | None = None) -> Tensor:
    """One query block: q (B, H, C, D), k / v (B, H, K, D|Dv) -> (B, H, C, Dv)."""
    if log_ramp is None:
        log_ramp = _block_log_ramp(table, q_idx, k_idx)
    if allowed is None:  # every query sees itself (distance 0, ramp 1): no empty row
        return F.scaled_dot_product_attention(q, k, v, attn_mask=log_ramp, dropout_p=dropout_p)
    log_ramp = log_ramp.masked_fill(~allowed, float("-inf"))  # (B|1, H, C, K)
    # A row with no key would be NaN in the fused kernel: let it see everything, then zero it.
    row_has_key = torch.isfinite(log_ramp).any(-1, keepdim=True)
    log_ramp = torch.where(row_has_key, log_ramp, 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=log_ramp, dropout_p=dropout_p)
    return out.masked_fill(~row_has_key, 0.0)


def banded_span_attention(q: Tensor, k: Tensor, v: Tensor, span_fraction: Tensor, *,
                          max_span: int, ramp: int, window: int, mask: Mask | None,
                          block: int = 256, dropout_p: float = 0.0) -> Tensor:
    """softmax(q k^T / sqrt(D) + log m_z(|i - j|)) v over the band |i - j| <= window only.

    q (B, H, L, D), k / v (B, H, S, D|Dv) -> (B, H, L, Dv); positions bottom-right aligned.
    """
    lq, lk = q.shape[2], k.shape[2]
    offset = lk - lq
    if (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, span_fraction))
            and fused_span_supported(q, v, dropout_p)):
        return fused_span_band(q, k, v, span_fraction, max_span=max_span, ramp=ramp,
                               window=window, mask=mask, block=block)
    table = log_ramp_table(span_fraction, max_span=max_span, ramp=ramp, window=window,
                           dtype=q.dtype)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, table))
    pieces = []
    ramps: dict[tuple[int, int, int], Tensor] = {}
    for q0 in range(0, lq, block):
        q1 = min(q0 + block, lq)
        k0, k1 = max(0, q0 + offset - window), min(lk, q1 + offset + window)
        q_idx = torch.arange(q0, q1, device=q.device)
        k_idx = torch.arange(k0, k1, device=q.device)
        if k1 <= k0:
            pieces.append(q.new_zeros(*q.shape[:2], q1 - q0, v.shape[-1]))
            continue
        allowed = None
        if mask is not None:
            b = torch.arange(mask.batch_size or 1, device=q.device).view(-1, 1, 1, 1)
            h = torch.arange(mask.num_heads or 1, device=q.device).view(1, -1, 1, 1)
            allowed = mask.allowed(b, h, q_idx.view(1, 1, -1, 1), k_idx.view(1, 1, 1, -1),
                                   lq, lk)
        args = (q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], table, q_idx + offset, k_idx,
                allowed, dropout_p)
        if needs_grad:
            pieces.append(checkpoint(_span_block, *args, use_reentrant=False))
            continue
        # Interior blocks share one distance pattern: build each distinct ramp bias once.
        pattern = (q0 + offset - k0, q1 - q0, k1 - k0)
        if pattern not in ramps:
            ramps[pattern] = _block_log_ramp(table, q_idx + offset, k_idx)
        pieces.append(_span_block(*args, log_ramp=ramps[pattern]))
    return torch.cat(pieces, dim=2)


class AdaptiveSpanAttention(MultiHeadAttention):
    """Multi-head attention with a learned soft span per head (Sukhbaatar et al., 2019).

    Options (besides :class:`MultiHeadAttention`'s projections, GQA, RoPE, QK-norm, dropout and
    StaticKVCache, same defaults; ``alibi`` and ``softcap`` are not supported):
        max_span: largest span S any head may reach (default 1024).
        ramp: width R of the soft ramp (default 32, the paper's value).
        span_init: initial span as a fraction of ``max_span`` (default 0.0, as the authors' code:
            every head starts seeing R keys and grows as the loss asks).
        span_loss: coefficient of the span penalty (default 2e-6, the paper's character-LM value).
        block: query rows per block of the banded computation (default 256).
    :meth:`auxiliary_loss` returns the span penalty; :meth:`current_window` the computed band.
    """

    def __init__(self, dim: int, num_heads: int, *, max_span: int = 1024, ramp: int = 32,
                 span_init: float = 0.0, span_loss: float = 2e-6, block: int = 256,
                 **mha_options: Any) -> None:
        reject_options("adaptive_span", mha_options, ("alibi", "softcap"),
                       "the span ramp is its score modification")
        super().__init__(dim, num_heads, **mha_options)
        if max_span < 1 or ramp < 1:
            raise ValueError(f"max_span and ramp must be >= 1, got max_span={max_span}, "
                             f"ramp={ramp}")
        if not 0.0 <= span_init <= 1.0:
            raise ValueError(f"span_init is a fraction of max_span in [0, 1], got {span_init}")
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

    def score_bias(self) -> Bias:
        return SpanRampBias(self.span_fraction, self.max_span, self.ramp)

    def attend_heads(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                     cache: Any = None) -> Tensor:
        if isinstance(cache, RollingKVCache):
            raise ValueError("adaptive_span needs contiguous key positions for its distance "
                             "ramp; use StaticKVCache (the span already bounds the keys used)")
        q, k, v, mask = self.prepare(x, context, mask=mask, cache=cache)  # (B, H|Hkv, L|S, Dh)
        window = self.current_window()
        heads = self.layout.num_heads
        dropout_p = self.dropout if self.training else 0.0
        out = banded_span_attention(q, expand_kv(k, heads), expand_kv(v, heads),
                                    self.span_fraction, max_span=self.max_span, ramp=self.ramp,
                                    window=window, mask=mask, block=self.block,
                                    dropout_p=dropout_p)

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
