"""The band computation of adaptive span: softmax(q k^T / sqrt(D) + log m_z(|i - j|)) v.

Shape legend: B batch, H heads, L / S query / key length, D / Dv head dims, C query rows of a
block, K keys of a block, W window (largest distance computed), M = W + 2 table columns.

Queries are taken in blocks of C rows; a block attends only the keys within distance W of its
rows, so work and memory grow with ``L * (C + 2W)``. The ramp enters as an additive bias looked
up from a per-distance table ``log m_z(x)`` (H, M), its last column ``-inf`` for "beyond W".

Training on CPU runs :class:`_FusedSpanBand`: each block is one call of torch's fused flash
kernel with the ramp (and the caller's mask) as a constant additive mask, and the backward is
the fused backward kernel on the same blocks. Only the span needs more: with
``dS = P * (dP - rowsum(dO * O))`` (the flash backward's score gradient),

    d loss / d z_h = sum_{i, j} dS_hij * d log m_z(x_ij) / d z_h
                   = sum over the ramp only (z_h < x < z_h + R): dS_hij / (R + z_h - x_ij)

so dS is formed only for the keys at ramp distances: two thin strips per block of
``C + (ramp width)`` keys, not the whole band. Everything else (CUDA, dropout, other dtypes)
runs the checkpointed SDPA path, :func:`banded_span_attention`.

:func:`span_ramp_attention` is the entry point (re-exported by :mod:`attnkit.engine`): the
adaptive-span layer hands it a :class:`~attnkit.functional.bias.SpanRampBias` and the band width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from attnkit.backends import cpu_flash, tuning
from attnkit.functional.bias import SpanRampBias
from attnkit.functional.masks import Mask
from attnkit.functional.math import expand_kv

__all__ = [
    "banded_span_attention",
    "fused_span_band",
    "fused_span_supported",
    "log_ramp_table",
    "ramp_slope_table",
    "span_blocks",
    "span_ramp_attention",
]


def _arange(start: int, stop: int, like: Tensor) -> Tensor:
    """Positions ``start .. stop - 1`` on ``like``'s device: (stop - start,) int64."""
    return torch.arange(start, stop, device=like.device)


def _ramp(span_fraction: Tensor, max_span: int, ramp: int, window: int, dtype: torch.dtype
          ) -> tuple[Tensor, Tensor]:
    """The ramp before its clamp, (R + z - x) / R, and where m_z(x) > 0 is kept: (H, window + 2)
    each, for distances x = 0..window + 1 (the last column is "beyond the window")."""
    distance = _arange(0, window + 2, span_fraction)
    # Only the lower clamp of [0, 1] shows: from a fraction of 1 on, every distance below
    # max_span has m = 1 already (raw >= 1), and none is on the ramp.
    span = span_fraction.to(dtype).clamp(min=0.0) * max_span  # (H,)
    raw = (ramp + span[:, None] - distance) / ramp
    keep = (raw > 0) & (distance < max_span) & (distance <= window)
    return raw, keep


def log_ramp_table(span_fraction: Tensor, *, max_span: int, ramp: int, window: int,
                   dtype: torch.dtype) -> Tensor:
    """log m_z(x) for distances x = 0..window, then one -inf column: (H, window + 2)."""
    raw, keep = _ramp(span_fraction, max_span, ramp, window, dtype)
    # log of 0 is -inf; the inner where keeps the gradient finite (no inf * 0).
    return torch.where(keep, torch.log(torch.where(keep, raw.clamp(max=1.0), 1.0)), -math.inf)


def ramp_slope_table(span_fraction: Tensor, *, max_span: int, ramp: int, window: int,
                     dtype: torch.dtype) -> Tensor:
    """d log m_z(x) / d span_fraction_h for x = 0..window + 1: (H, window + 2).

    The derivative autograd takes through :func:`log_ramp_table` (clamps pass the gradient at
    their bounds, as torch's ``clamp`` does), written out so the backward needs no graph:
    ``max_span / (R * raw)`` on the ramp (``raw <= 1``), 0 elsewhere."""
    raw, keep = _ramp(span_fraction, max_span, ramp, window, dtype)
    # The clamp of the fraction to [0, 1] stops the gradient below 0. Above 1 nothing is on the
    # ramp (it would start at x = max_span, past the last kept distance): no test needed there.
    on_ramp = keep & (raw <= 1.0) & (span_fraction >= 0.0)[:, None]
    return torch.where(on_ramp, max_span / (ramp * raw), 0.0)


def span_blocks(lq: int, lk: int, window: int, block: int) -> list[tuple[int, int, int, int]]:
    """(q0, q1, k0, k1) of each query block and the keys within ``window`` of its rows
    (positions bottom-right aligned); blocks whose band misses every key are left out."""
    offset = lk - lq
    blocks = []
    for q0 in range(0, lq, block):
        q1 = min(q0 + block, lq)
        k0, k1 = max(0, q0 + offset - window), min(lk, q1 + offset + window)
        if k1 > k0:
            blocks.append((q0, q1, k0, k1))
    return blocks


def fused_span_supported(q: Tensor, v: Tensor, dropout_p: float) -> bool:
    """Whether :func:`fused_span_band` can run (CPU, float32 / float64, Dv == D, no dropout)."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64)
            and q.shape[-1] == v.shape[-1] and dropout_p == 0.0
            and cpu_flash.fused_kernel_available())


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, span_fraction: Tensor) -> None:
    """The fused kernel does not check head counts (a mismatch ends the process): check here."""
    if not (q.dim() == k.dim() == v.dim() == 4 and q.shape[:2] == k.shape[:2] == v.shape[:2]
            and k.shape[2] == v.shape[2] and q.shape[3] == k.shape[3]
            and span_fraction.shape == q.shape[1:2]):
        raise ValueError(
            "span attention needs q (B, H, L, D), k (B, H, S, D), v (B, H, S, Dv) and "
            f"span_fraction (H,), got q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}, span_fraction {tuple(span_fraction.shape)}; repeat grouped "
            "key/value heads first (span_ramp_attention does)")


@dataclass(frozen=True)
class _Band:
    """What the blocks need besides the tensors."""

    max_span: int
    ramp: int
    window: int
    block: int
    mask: Mask | None


def _block_ramp(table: Tensor, ramps: dict[tuple[int, int, int], Tensor], q0: int, q1: int,
                k0: int, k1: int, offset: int) -> Tensor:
    """log m_z(|i - j|) of one block, (1, H, C, K): one gather from the distance table, done
    once per block geometry in ``ramps`` (all interior blocks share one)."""
    pattern = (q0 + offset - k0, q1 - q0, k1 - k0)  # the block's distances depend on these only
    if pattern not in ramps:
        last = table.shape[1] - 1  # the "beyond the window" column
        q_pos = _arange(q0, q1, table) + offset
        distance = (q_pos[:, None] - _arange(k0, k1, table)[None, :]).abs().clamp(max=last)
        ramps[pattern] = table[:, distance].unsqueeze(0)
    return ramps[pattern]


def _block_mask(mask: Mask | None, q0: int, q1: int, k0: int, k1: int, lq: int, lk: int,
                like: Tensor) -> tuple[Tensor | None, bool]:
    """The caller's mask on one block, bool (B|1, H|1, C, K) or None, and whether a row of the
    block can be left with no key: under a mask, or for query positions before key 0 (more
    queries than keys). Otherwise every row sees itself (distance 0, ramp 1)."""
    if mask is None:
        return None, q0 + lk - lq < 0
    return mask.tile(_arange(q0, q1, like), _arange(k0, k1, like), lq, lk), True


def _masked_bias(log_ramp: Tensor, allowed: Tensor | None, rows_can_be_empty: bool
                 ) -> tuple[Tensor, Tensor | None]:
    """Additive mask (B|1, H, C, K), ``-inf`` where not allowed, and which rows have a key
    (B|1, H, C) (None: all do)."""
    bias = log_ramp if allowed is None else log_ramp.masked_fill(~allowed, -math.inf)
    return bias, (torch.isfinite(bias).any(-1) if rows_can_be_empty else None)


def _block_bias(table: Tensor, band: _Band, q0: int, q1: int, k0: int, k1: int, lq: int,
                lk: int, ramps: dict[tuple[int, int, int], Tensor]
                ) -> tuple[Tensor, Tensor | None]:
    """:func:`_masked_bias` of one block."""
    log_ramp = _block_ramp(table, ramps, q0, q1, k0, k1, lk - lq)
    return _masked_bias(log_ramp, *_block_mask(band.mask, q0, q1, k0, k1, lq, lk, table))


def _kernel_mask(bias: Tensor, row_has_key: Tensor | None) -> Tensor:
    """A row with no key may come out NaN (torch 2.13's CPU kernels give 0, which other builds
    and devices need not): such rows see everything instead, and are zeroed after."""
    if row_has_key is None:
        return bias
    return torch.where(row_has_key[..., None], bias, torch.zeros_like(bias))


def _ramp_range(slopes: Tensor) -> tuple[int, int] | None:
    """[lo, hi] of the distances where any head's slope is nonzero, or None."""
    where = (slopes != 0).any(0).nonzero()
    return None if where.numel() == 0 else (int(where.min()), int(where.max()))


def _span_grad_of_block(q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor, lse: Tensor,
                        delta: Tensor, table: Tensor, slopes: Tensor, ramp_range: tuple[int, int],
                        band: _Band, rows: tuple[int, int], lq: int, lk: int, scale: float,
                        ramps: dict[tuple[int, int, int], Tensor]) -> Tensor:
    """sum_{i, j} dS_hij * slope_h(x_ij) over one block's rows: (H,).

    Only keys at ramp distances ``ramp_range`` = [lo, hi] matter; they lie in two strips, left
    and right of the rows.
    q / grad_out (B, H, C, D|Dv) of the block, k / v (B, H, S, D|Dv) whole, lse / delta (B, H, C).
    """
    lo, hi = ramp_range
    q0, q1 = rows
    p0, p1 = q0 + lk - lq, q1 - 1 + lk - lq  # first and last key position the rows face
    total = slopes.new_zeros(slopes.shape[0])
    q_pos = _arange(q0, q1, q)[:, None] + (lk - lq)  # (C, 1)
    # Left strip: keys p - hi .. p - lo (distance 0 counted here); right: p + max(lo, 1) .. p + hi.
    for left, a, b in ((True, p0 - hi, p1 - lo + 1), (False, p0 + max(lo, 1), p1 + hi + 1)):
        a, b = max(a, 0), min(b, lk)
        if b <= a:
            continue
        bias, _ = _block_bias(table, band, q0, q1, a, b, lq, lk, ramps)  # (B|1,H,C,K), -inf kept
        s = (q @ k[:, :, a:b].mT) * scale + bias
        p = torch.exp(s - lse[..., None])  # rows with no key: lse +inf -> 0
        d_s = p * ((grad_out @ v[:, :, a:b].mT) - delta[..., None])
        k_pos = _arange(a, b, q)[None, :]  # (1, K)
        distance = (q_pos - k_pos).abs()
        on_side = (k_pos <= q_pos) if left else (k_pos > q_pos)
        weight = torch.where(on_side & (distance >= lo) & (distance <= hi),
                             slopes[:, distance.clamp(max=slopes.shape[1] - 1)], 0.0)  # (H,C,K)
        total = total + (d_s * weight).sum((0, 2, 3))
    return total


class _FusedSpanBand(torch.autograd.Function):
    """Banded span attention on the fused CPU kernel; see the module docstring."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, span_fraction: Tensor,
                band: _Band) -> Tensor:
        lq, lk, scale = q.shape[2], k.shape[2], q.shape[-1] ** -0.5
        table = log_ramp_table(span_fraction.detach(), max_span=band.max_span, ramp=band.ramp,
                               window=band.window, dtype=q.dtype)
        out = q.new_zeros(*q.shape[:-1], v.shape[-1])  # (B, H, L, Dv)
        # Log-sum-exp of each row, (B, H, L); +inf for a row with no key (none in its band, or
        # all masked), so that its P = exp(S - lse) is exactly 0 in backward.
        lse = q.new_full(q.shape[:-1], math.inf)
        ramps: dict[tuple[int, int, int], Tensor] = {}
        for q0, q1, k0, k1 in span_blocks(lq, lk, band.window, band.block):
            bias, row_has_key = _block_bias(table, band, q0, q1, k0, k1, lq, lk, ramps)
            o, l = cpu_flash.flash_forward(q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1],
                                           causal=False, attn_mask=_kernel_mask(bias, row_has_key),
                                           scale=scale)
            if row_has_key is not None:
                o = o.masked_fill(~row_has_key[..., None], 0.0)
                l = l.masked_fill(~row_has_key, math.inf)
            out[:, :, q0:q1], lse[:, :, q0:q1] = o, l
        ctx.band = band
        ctx.save_for_backward(q, k, v, span_fraction, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Any:
        q, k, v, span_fraction, out, lse = ctx.saved_tensors
        band: _Band = ctx.band
        lq, lk, scale = q.shape[2], k.shape[2], q.shape[-1] ** -0.5
        grad_out = grad_out.contiguous()
        options = {"max_span": band.max_span, "ramp": band.ramp, "window": band.window,
                   "dtype": q.dtype}
        table = log_ramp_table(span_fraction.detach(), **options)
        slopes = ramp_slope_table(span_fraction.detach(), **options)
        # None: no head has a ramp inside the window, or the span needs no gradient
        ramp_range = _ramp_range(slopes) if ctx.needs_input_grad[3] else None
        delta = (grad_out * out).sum(-1)  # (B, H, L)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        d_span = torch.zeros_like(span_fraction)
        ramps: dict[tuple[int, int, int], Tensor] = {}
        for q0, q1, k0, k1 in span_blocks(lq, lk, band.window, band.block):
            bias, row_has_key = _block_bias(table, band, q0, q1, k0, k1, lq, lk, ramps)
            gq, gk, gv = cpu_flash.flash_backward(
                grad_out[:, :, q0:q1], q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1],
                out[:, :, q0:q1], lse[:, :, q0:q1], causal=False,
                attn_mask=_kernel_mask(bias, row_has_key), scale=scale)
            dq[:, :, q0:q1] = gq  # query blocks do not overlap; key ranges do
            dk[:, :, k0:k1] += gk
            dv[:, :, k0:k1] += gv
            if ramp_range is not None:
                d_span += _span_grad_of_block(
                    q[:, :, q0:q1], k, v, grad_out[:, :, q0:q1], lse[:, :, q0:q1],
                    delta[:, :, q0:q1], table, slopes, ramp_range, band, (q0, q1), lq, lk,
                    scale, ramps)
        return dq, dk, dv, d_span, None


def fused_span_band(q: Tensor, k: Tensor, v: Tensor, span_fraction: Tensor, *, max_span: int,
                    ramp: int, window: int, mask: Mask | None, block: int) -> Tensor:
    """q (B, H, L, D), k / v (B, H, S, D|Dv), span_fraction (H,) -> (B, H, L, Dv).

    Differentiable in q, k, v and span_fraction; needs :func:`fused_span_supported`."""
    _check_shapes(q, k, v, span_fraction)
    out: Tensor = _FusedSpanBand.apply(q, k, v, span_fraction,
                                       _Band(max_span, ramp, window, block, mask))
    return out


def _span_block(q: Tensor, k: Tensor, v: Tensor, log_ramp: Tensor, allowed: Tensor | None,
                rows_can_be_empty: bool, dropout_p: float) -> Tensor:
    """One query block: q (B, H, C, D), k / v (B, H, K, D|Dv), log_ramp (1, H, C, K), allowed
    (B|1, H|1, C, K) or None -> (B, H, C, Dv)."""
    bias, row_has_key = _masked_bias(log_ramp, allowed, rows_can_be_empty)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_kernel_mask(bias, row_has_key),
                                         dropout_p=dropout_p)
    return out if row_has_key is None else out.masked_fill(~row_has_key[..., None], 0.0)


def banded_span_attention(q: Tensor, k: Tensor, v: Tensor, span_fraction: Tensor, *,
                          max_span: int, ramp: int, window: int, mask: Mask | None,
                          block: int | None = None, dropout_p: float = 0.0) -> Tensor:
    """softmax(q k^T / sqrt(D) + log m_z(|i - j|)) v over the band |i - j| <= window only.

    q (B, H, L, D), k / v (B, H, S, D|Dv) -> (B, H, L, Dv); positions bottom-right aligned.
    Rows with no key in the band (a mask, or more queries than keys) give zeros. ``block``
    defaults to the tuning's ``span_block``.
    """
    _check_shapes(q, k, v, span_fraction)
    block = tuning.current().span_block if block is None else block
    if (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, span_fraction))
            and fused_span_supported(q, v, dropout_p)):
        return fused_span_band(q, k, v, span_fraction, max_span=max_span, ramp=ramp,
                               window=window, mask=mask, block=block)
    lq, lk = q.shape[2], k.shape[2]
    table = log_ramp_table(span_fraction, max_span=max_span, ramp=ramp, window=window,
                           dtype=q.dtype)
    # Training off the fused kernel: each block's scores are recomputed in the backward.
    checkpointed = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, table))
    out = q.new_zeros(*q.shape[:-1], v.shape[-1])  # (B, H, L, Dv); rows with no key stay 0
    ramps: dict[tuple[int, int, int], Tensor] = {}
    for q0, q1, k0, k1 in span_blocks(lq, lk, window, block):
        args = (q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1],
                _block_ramp(table, ramps, q0, q1, k0, k1, lk - lq),
                *_block_mask(mask, q0, q1, k0, k1, lq, lk, q), dropout_p)
        out[:, :, q0:q1] = (checkpoint(_span_block, *args, use_reentrant=False) if checkpointed
                            else _span_block(*args))
    return out


def span_ramp_attention(q: Tensor, k: Tensor, v: Tensor, ramp: SpanRampBias, *, window: int,
                        mask: Mask | None, block: int, dropout_p: float = 0.0) -> Tensor:
    """``softmax(q k^T / sqrt(D) + ramp) v`` over the band ``|i - j| <= window`` only.

    q (B, H, L, D), k / v (B, Hkv, S, D|Dv) (GQA: Hkv divides H) -> (B, H, L, Dv); ``window`` is
    the largest distance the ramp leaves open (keys beyond it must have weight 0), ``block`` the
    query rows per kernel call. Differentiable in q, k, v and ``ramp.span_fraction``.
    """
    heads = q.shape[1]
    return banded_span_attention(q, expand_kv(k, heads), expand_kv(v, heads),
                                 ramp.span_fraction, max_span=ramp.max_span, ramp=ramp.ramp,
                                 window=window, mask=mask, block=block, dropout_p=dropout_p)
