"""Kernel-feature attention (``linear``, ``performer``): the engine's second entry point.

:func:`kernel_attention` runs phi(q) phi(k)^T v without forming the L x S matrix: causal as a
chunked parallel form (inside a chunk a masked C x C product, across chunks prefix sums of
per-chunk states; decoding continues from a ``(kv, normalizer)`` state), non-causal in chunks
with a hand-written backward (below). :func:`kernel_attention_weights` gives the implied
attention matrix for explanations.

Non-causal kernel-feature attention in chunks, with a hand-written backward:

Shape legend: B batch, H query heads, Hkv key/value heads, L / S query / key length, Dh head dim,
Dv value head dim, M feature count, C chunk length, E = Dv + 1 (values with a ones column).

With positive features phi (``linear``, ``performer``)::

    kv    = sum_j [v_j | 1]^T phi(k_j)               (E, M): numerator and normalizer sums
    out_i = num_i / den_i,   [num_i | den_i] = phi(q_i) kv^T

Keys are read in chunks of C rows and folded into ``kv``; queries then read it chunk by chunk.
No (L, M) or (S, M) map is ever whole. Forward stores only q, k, v, the output, the per-row
1 / den and ``kv``, and backward recomputes each chunk's features once:

    query chunk:  dboth = [dout / den | -(dout . out) / den]      (C, E), 0 where den == 0
                  d kv^T += phi(q)^T dboth,   d phi(q) = dboth kv
    key chunk:    d phi(k) = [v | 1] d kv,   dv = phi(k) (d kv)[:Dv]^T

and the feature map turns d phi into dq / dk with its own derivative (:class:`KernelFeatures`).
Against autograd with activation checkpointing, this skips the second product of each query
chunk in backward (``out`` and 1 / den are saved), the copies autograd makes of strided views,
and the per-chunk gradient buffers: dq, dk and dv are each written once into a whole tensor.

Numerical range: key chunks may be scaled by ``exp(-shift_c)`` (one detached shift per (B, Hkv)
and chunk); the chunk sums are brought to ``exp(-top)``, ``top`` the largest shift, as they
arrive. A factor common to every key cancels in num / den, so its gradient is exactly zero; in
backward chunk c's part of ``d kv`` is scaled by ``exp(shift_c - top)`` instead of its features.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from attnkit.backends import tuning
from attnkit.functional.math import check_weights_size, expand_kv, finite_or

__all__ = ["KernelFeatures", "causal_kernel_attention",
           "chunked_kernel_attention", "inverse_or_zero", "kernel_attention",
           "kernel_attention_weights", "kernel_feature_maps"]


class KernelFeatures(ABC):
    """A feature map phi for one forward call, with the derivative the chunked backward needs.

    Created once per call, so weights that may be redrawn later (Performer) are fixed for that
    call's backward. ``queries`` and ``keys`` are also used under autograd (causal path), so
    they must be differentiable torch code; the ``*_backward`` methods give the same gradient
    by hand. Feature maps carry no trainable parameters.
    """

    @abstractmethod
    def queries(self, q: Tensor) -> Tensor:
        """phi(q) (B, H, C, M) of queries (B, H, C, Dh), up to any positive factor per row."""

    @abstractmethod
    def keys(self, k: Tensor, valid: Tensor | None = None, *, shift: bool = False
             ) -> tuple[Tensor, Tensor | None]:
        """phi(k) (B, Hkv, C, M) of keys (B, Hkv, C, Dh), zero where ``valid`` (B, C) is False.

        With ``shift=True`` the features may be divided by ``exp(s)`` for one detached ``s``
        (B, Hkv) per call (for range), returned (-inf when no key is valid); else the second
        value is None. ``shift=False`` (causal, decoding) must give the same scale every call.
        """

    @abstractmethod
    def queries_backward(self, q: Tensor, phi: Tensor, grad_phi: Tensor) -> Tensor:
        """dq (B, H, C, Dh) from d phi (B, H, C, M), ``phi = self.queries(q)``; a row factor
        that ``queries`` divides out is treated as a constant (it cancels in num / den)."""

    @abstractmethod
    def keys_backward(self, k: Tensor, phi: Tensor, grad_phi: Tensor) -> Tensor:
        """dk (B, Hkv, C, Dh) from d phi, ``phi = self.keys(k, valid, shift=True)[0]``; the
        shift is a constant."""


def inverse_or_zero(den: Tensor) -> Tensor:
    """1 / den, 0 where den == 0 (a query that sees no key)."""
    ok = den > 0
    return torch.where(ok, 1.0 / torch.where(ok, den, torch.ones_like(den)),
                       torch.zeros_like(den))


def _with_ones(v: Tensor) -> Tensor:
    """[v | 1] (..., Dv + 1)."""
    return torch.cat([v, v.new_ones(()).expand(*v.shape[:-1], 1)], -1)


def _reference_shift(top: Tensor) -> Tensor:
    """top with -inf (no valid key so far) replaced by 0, so exp(x - ref) stays finite."""
    return finite_or(top)


def _fold_keys(features: KernelFeatures, k_rows: Tensor, v_rows: Tensor,
               valid: Tensor | None, chunk: int) -> tuple[Tensor, Tensor | None]:
    """kv (B, Hkv, E, M) scaled by exp(-top) and top (B, Hkv, 1, 1) (None if never shifted)."""
    kv: Tensor | None = None
    top: Tensor | None = None
    for start in range(0, k_rows.shape[1], chunk):
        rows = slice(start, start + chunk)
        phi, shift = features.keys(k_rows[:, rows].transpose(1, 2),
                                   None if valid is None else valid[:, rows], shift=True)
        # [v | 1]^T phi: the ones column makes the normalizer come out of the same GEMM.
        kv_c = _with_ones(v_rows[:, rows]).permute(0, 2, 3, 1) @ phi  # (B, Hkv, E, M)
        if shift is None:
            kv = kv_c if kv is None else kv.add_(kv_c)
            continue
        shift = shift[..., None, None]
        if kv is None or top is None:
            kv, top = kv_c, shift
            continue
        new_top = torch.maximum(top, shift)
        ref = _reference_shift(new_top)
        kv = kv.mul_(torch.exp(top - ref)).add_(kv_c.mul_(torch.exp(shift - ref)))
        top = new_top
    assert kv is not None  # callers pass at least one key
    return kv, top


def _sum_groups(grad: Tensor, kv_heads: int) -> Tensor:
    """Adjoint of :func:`expand_kv` (query head h reads key head h // (H / Hkv)):
    (B, H, ...) -> (B, Hkv, ...)."""
    b, heads = grad.shape[:2]
    if heads == kv_heads:
        return grad
    return grad.view(b, kv_heads, heads // kv_heads, *grad.shape[2:]).sum(2)


class _ChunkedKernelAttention(torch.autograd.Function):
    """Rows-first tensors: q (B, L, H, Dh), k (B, S, Hkv, Dh), v (B, S, Hkv, Dv) -> out
    (B, L, H, Dv). ``valid`` (B, S) bool or None."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None,
                features: KernelFeatures, chunk: int) -> Tensor:
        b, length, heads = q.shape[:3]
        dv = v.shape[-1]
        kv = top = inverse = None  # None: backward returns zero gradients without them
        if not (k.shape[1] and length):  # no keys (every row is zero) or no queries
            out = q.new_zeros(b, length, heads, dv)
        else:
            out, inverse = q.new_empty(b, length, heads, dv), q.new_empty(b, length, heads, 1)
            kv, top = _fold_keys(features, k, v, valid, chunk)
            kv_t = expand_kv(kv, heads).mT  # (B, H, M, E)
            for start in range(0, length, chunk):
                rows = slice(start, start + chunk)
                phi = features.queries(q[:, rows].transpose(1, 2).contiguous())  # (B, H, C, M)
                # Numerator and denominator as two products: a GEMM Dv wide plus a GEMV ran
                # faster than one Dv + 1 wide (docs/tuning.md).
                inverse_c = inverse_or_zero(phi @ kv_t[..., dv:])  # (B, H, C, 1): 1 / den or 0
                out[:, rows] = (phi @ kv_t[..., :dv]).mul_(inverse_c).transpose(1, 2)
                inverse[:, rows] = inverse_c.transpose(1, 2)
        ctx.features, ctx.chunk = features, chunk
        ctx.save_for_backward(q, k, v, valid, out, inverse, kv, top)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, valid, out, inverse, kv, top = ctx.saved_tensors
        features: KernelFeatures = ctx.features
        chunk: int = ctx.chunk
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        # Every row is written below unless the output was all zeros (no keys or no queries).
        fresh = torch.zeros_like if kv is None else torch.empty_like
        grad_q = fresh(q) if need_q else None
        grad_k = fresh(k) if need_k else None
        grad_v = fresh(v) if need_v else None
        if kv is None:
            return grad_q, grad_k, grad_v, None, None, None
        heads, dv = q.shape[2], v.shape[-1]
        kv_t = expand_kv(kv, heads).mT  # (B, H, M, E)
        grad_kv_t = torch.zeros_like(kv_t) if (need_k or need_v) else None
        for start in range(0, q.shape[1], chunk):
            rows = slice(start, start + chunk)
            q_c = q[:, rows].transpose(1, 2).contiguous()  # (B, H, C, Dh)
            phi = features.queries(q_c)
            grad_c = grad_out[:, rows].transpose(1, 2)  # (B, H, C, Dv)
            grad_num = grad_c * inverse[:, rows].transpose(1, 2)
            grad_den = (grad_num * out[:, rows].transpose(1, 2)).sum(-1, keepdim=True).neg_()
            grad_both = torch.cat([grad_num, grad_den], -1)  # (B, H, C, E)
            if grad_kv_t is not None:
                grad_kv_t.add_(phi.mT @ grad_both)
            if grad_q is not None:
                grad_phi = grad_both @ kv_t.mT  # (B, H, C, M)
                grad_q[:, rows] = features.queries_backward(q_c, phi, grad_phi).transpose(1, 2)
        if grad_kv_t is None:
            return grad_q, grad_k, grad_v, None, None, None
        grad_kv = _sum_groups(grad_kv_t, k.shape[2]).mT  # (B, Hkv, E, M)
        ref = None if top is None else _reference_shift(top)
        for start in range(0, k.shape[1], chunk):
            rows = slice(start, start + chunk)
            k_c = k[:, rows].transpose(1, 2)
            phi, shift = features.keys(k_c, None if valid is None else valid[:, rows],
                                       shift=True)
            # This chunk entered kv scaled by exp(shift - top): scale the small (E, M) gradient.
            grad_kv_c = grad_kv if shift is None or ref is None else (
                grad_kv * torch.exp(shift[..., None, None] - ref))
            if grad_v is not None:  # the ones column's gradient goes nowhere
                grad_v[:, rows] = (phi @ grad_kv_c[..., :dv, :].mT).transpose(1, 2)
            if grad_k is not None:
                grad_phi = _with_ones(v[:, rows]).transpose(1, 2) @ grad_kv_c  # (B, Hkv, C, M)
                grad_k[:, rows] = features.keys_backward(k_c, phi, grad_phi).transpose(1, 2)
        return grad_q, grad_k, grad_v, None, None, None


def _check_chunk(chunk: int) -> None:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")


def chunked_kernel_attention(q: Tensor, k: Tensor, v: Tensor, features: KernelFeatures, *,
                             chunk: int, key_valid: Tensor | None = None) -> Tensor:
    """Non-causal kernel attention without full-length feature maps.

    q (B, H, L, Dh), k (B, Hkv, S, Dh), v (B, Hkv, S, Dv), key_valid (B, S) bool (True = real
    key) -> out (B, H, L, Dv), laid out as a transposed (B, L, H, Dv) tensor so merging heads is
    free. A query that sees no key gets zeros. GQA: ``kv`` is built on Hkv heads and repeated
    (small). Not twice differentiable.
    """
    _check_chunk(chunk)
    out = _ChunkedKernelAttention.apply(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                        key_valid, features, chunk)
    return out.transpose(1, 2)


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """num (..., D) / den (..., 1), rows of den == 0 (no visible key) giving 0, finite gradients.

    The where()s act on the small den; num is touched once (by the product).
    """
    return num * inverse_or_zero(den)


def causal_kernel_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, *, chunk: int | None = None,
                            kv0: Tensor | None = None, normalizer0: Tensor | None = None
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """Causal, chunked: query i sees keys j <= i (plus the initial state, if any).

    phi_q / phi_k (B, H, L, M), v (B, H, L, Dv). Returns out (B, H, L, Dv) and the final
    state ``kv`` (B, H, M, Dv), ``normalizer`` (B, H, M).
    """
    chunk = tuning.current().kernel_causal_chunk if chunk is None else chunk
    _check_chunk(chunk)
    b, h, length, m = phi_q.shape
    dv = v.shape[-1]
    pad = (-length) % chunk
    if pad:  # zero features add nothing to any sum; padded outputs are cut off below
        phi_q, phi_k, v = (F.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, v))
    n = (length + pad) // chunk
    qc = phi_q.view(b, h, n, chunk, m)
    kc = phi_k.view(b, h, n, chunk, m)
    vc = v.view(b, h, n, chunk, dv)
    chunk_kv = kc.mT @ vc  # (B, H, n, M, Dv)
    chunk_norm = kc.sum(3)  # (B, H, n, M)
    # State before each chunk: exclusive prefix sum over chunks, plus the initial state.
    kv_before = chunk_kv.cumsum(2) - chunk_kv
    norm_before = chunk_norm.cumsum(2) - chunk_norm
    if kv0 is not None and normalizer0 is not None:
        kv_before = kv_before + kv0.unsqueeze(2)
        norm_before = norm_before + normalizer0.unsqueeze(2)
    elif kv0 is not None or normalizer0 is not None:
        raise ValueError("a decoding state is kv0 and normalizer0 together, got "
                         f"{'kv0' if normalizer0 is None else 'normalizer0'} only")
    within = torch.tril(qc @ kc.mT)  # (B, H, n, C, C)
    num = qc @ kv_before + within @ vc  # (B, H, n, C, Dv)
    den = (qc @ norm_before.unsqueeze(-1)) + within.sum(-1, keepdim=True)  # (B, H, n, C, 1)
    out = _safe_divide(num, den).reshape(b, h, n * chunk, dv)[:, :, :length]
    kv_final = kv_before[:, :, -1] + chunk_kv[:, :, -1]
    norm_final = norm_before[:, :, -1] + chunk_norm[:, :, -1]
    return out, kv_final, norm_final


def kernel_attention_weights(phi_q: Tensor, phi_k: Tensor, causal: bool) -> Tensor:
    """The implied attention matrix (B, H, L, S): phi(q_i).phi(k_j) / sum_j' phi(q_i).phi(k_j')."""
    lq, lk = phi_q.shape[2], phi_k.shape[2]
    check_weights_size(lq, lk)
    scores = phi_q @ phi_k.mT  # (B, H, L, S)
    if causal:
        keep = scores.new_ones(lq, lk, dtype=torch.bool).tril(lk - lq)
        scores = scores.masked_fill(~keep, 0.0)
    return _safe_divide(scores, scores.sum(-1, keepdim=True))


def kernel_feature_maps(q: Tensor, k: Tensor, features: KernelFeatures, *,
                        key_valid: Tensor | None, causal: bool) -> tuple[Tensor, Tensor]:
    """phi(q) (B, H, L, M) and phi(k) repeated to H heads (B, H, S, M), zero on padded keys.

    Non-causal maps may carry one common factor per (batch, kv head) (it cancels in num / den).
    """
    phi_k = features.keys(k, key_valid, shift=not causal)[0]
    return features.queries(q), expand_kv(phi_k, q.shape[1])


def kernel_attention(q: Tensor, k: Tensor, v: Tensor, features: KernelFeatures, *,
                     causal: bool, chunk: int, key_valid: Tensor | None = None,
                     state: tuple[Tensor, Tensor] | None = None
                     ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """``phi(q) phi(k)^T v`` normalized per row, never forming the (L, S) matrix.

    q (B, H, L, Dh), k (B, Hkv, S, Dh), v (B, Hkv, S, Dv) (GQA: Hkv divides H), ``key_valid``
    (B, S) bool or None. ``causal``: query i sees keys j <= i, plus ``state`` = (kv (B, H, M, Dv),
    normalizer (B, H, M)) of earlier tokens if given; returns (out (B, H, L, Dv), the state after
    these keys). Non-causal: returns (out, None) and takes no state. ``chunk`` is the chunk
    length of the path that runs. A query that sees no key gets zeros.
    """
    if not causal:
        if state is not None:
            raise ValueError("a decoding state is causal: pass causal=True with state")
        return chunked_kernel_attention(q, k, v, features, chunk=chunk, key_valid=key_valid), None
    phi_q, phi_k = kernel_feature_maps(q, k, features, key_valid=key_valid, causal=True)
    kv0, normalizer0 = state if state is not None else (None, None)
    out, kv, normalizer = causal_kernel_attention(phi_q, phi_k, expand_kv(v, q.shape[1]),
                                                  chunk=chunk, kv0=kv0, normalizer0=normalizer0)
    return out, (kv, normalizer)
