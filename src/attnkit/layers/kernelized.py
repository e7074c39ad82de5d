"""Shared core of kernel-feature attention (``linear``, ``performer``).

Shape legend: B batch, H query heads, Hkv key/value heads, L / S query / key length,
M feature count, Dv value head dim, C chunk length, n = ceil(L / C) chunks.

With a positive feature map phi, softmax(q k^T) is replaced by phi(q) phi(k)^T, and the product
is re-associated so no L x S matrix is formed (Katharopoulos et al., 2020, eq. 4-6)::

    non-causal:  out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T (sum_j phi(k_j))
    causal:      sums over j <= i:  S_i = S_{i-1} + phi(k_i) v_i^T,  z_i = z_{i-1} + phi(k_i)
                 out_i = phi(q_i)^T S_i / phi(q_i)^T z_i

Non-causal training and inference never form a full (L, M) feature map: keys and queries are
read in chunks, with a hand-written backward (:mod:`attnkit.layers.noncausal_kernel`).

Causal training uses the chunked parallel form: inside a chunk a masked C x C product, across
chunks the prefix sums of per-chunk states (memory O(n M Dv + L C)). Decoding keeps only
``(S, z)`` in a :class:`RecurrentState`: O(1) memory and work per token. Padded keys get
``phi(k) = 0``; a query that sees no key returns zeros.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit.functional.masks import Mask
from attnkit.functional.math import expand_kv
from attnkit.layers.base import check_input, reject_options
from attnkit.layers.mask_parts import split_mask
from attnkit.layers.multihead import MultiHeadAttention
from attnkit.layers.noncausal_kernel import (
    KernelFeatures,
    chunked_kernel_attention,
    inverse_or_zero,
)

__all__ = ["KernelFeatures", "KernelizedAttention", "RecurrentState", "causal_kernel_attention",
           "kernel_attention_weights"]

#: Largest Lq * Lk for which the implied attention matrix is materialized on request.
MAX_WEIGHTS_ELEMENTS = 4096 * 4096

#: Default chunk length of the non-causal path. At L = 32k, dim 512, 8 heads, one CPU thread,
#: performer's chunked forward alone took 0.85-0.98 s (medians of 3) for chunks of 128 to 1024,
#: within this machine's noise (one-off timing, side by side); 512 keeps the (C, M)
#: temporaries small (4 MiB at 8 heads, M = 256).
NONCAUSAL_CHUNK = 512


class RecurrentState:
    """Decoding state of a kernel-feature layer: ``S`` (B, H, M, Dv), ``z`` (B, H, M).

    Pass the same object as ``cache=`` on every step; it starts empty. ``position`` counts the
    tokens folded in so far.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.kv: Tensor | None = None  # (B, H, M, Dv) sum of phi(k) v^T
        self.normalizer: Tensor | None = None  # (B, H, M) sum of phi(k)
        self.position = 0
        self.owner: int | None = None  # id of the feature map the sums were built with

    def __repr__(self) -> str:
        return f"RecurrentState(position={self.position})"


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """num (..., D) / den (..., 1), rows of den == 0 (no visible key) giving 0, finite gradients.

    The where()s act on the small den; num is touched once (by the product).
    """
    return num * inverse_or_zero(den)


def causal_kernel_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, *, chunk: int = 128,
                            kv0: Tensor | None = None, normalizer0: Tensor | None = None
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """Causal, chunked: query i sees keys j <= i (plus the initial state, if any).

    phi_q / phi_k (B, H, L, M), v (B, H, L, Dv). Returns out (B, H, L, Dv) and the final
    state ``kv`` (B, H, M, Dv), ``normalizer`` (B, H, M).
    """
    b, h, length, m = phi_q.shape
    dv = v.shape[-1]
    pad = (-length) % chunk
    if pad:  # zero features add nothing to any sum; padded outputs are cut off below
        phi_q, phi_k, v = (F.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, v))
    n = (length + pad) // chunk
    qc = phi_q.view(b, h, n, chunk, m)
    kc = phi_k.view(b, h, n, chunk, m)
    vc = v.view(b, h, n, chunk, dv)
    chunk_kv = kc.transpose(-1, -2) @ vc  # (B, H, n, M, Dv)
    chunk_norm = kc.sum(3)  # (B, H, n, M)
    # State before each chunk: exclusive prefix sum over chunks, plus the initial state.
    kv_before = chunk_kv.cumsum(2) - chunk_kv
    norm_before = chunk_norm.cumsum(2) - chunk_norm
    if kv0 is not None and normalizer0 is not None:
        kv_before = kv_before + kv0.unsqueeze(2)
        norm_before = norm_before + normalizer0.unsqueeze(2)
    within = torch.tril(qc @ kc.transpose(-1, -2))  # (B, H, n, C, C)
    num = qc @ kv_before + within @ vc  # (B, H, n, C, Dv)
    den = (qc @ norm_before.unsqueeze(-1)) + within.sum(-1, keepdim=True)  # (B, H, n, C, 1)
    out = _safe_divide(num, den).reshape(b, h, n * chunk, dv)[:, :, :length]
    kv_final = kv_before[:, :, -1] + chunk_kv[:, :, -1]
    norm_final = norm_before[:, :, -1] + chunk_norm[:, :, -1]
    return out, kv_final, norm_final


def kernel_attention_weights(phi_q: Tensor, phi_k: Tensor, causal: bool) -> Tensor:
    """The implied attention matrix (B, H, L, S): phi(q_i).phi(k_j) / sum_j' phi(q_i).phi(k_j')."""
    lq, lk = phi_q.shape[2], phi_k.shape[2]
    if lq * lk > MAX_WEIGHTS_ELEMENTS:
        raise ValueError(f"the implied attention matrix of {lq} x {lk} exceeds the "
                         f"{MAX_WEIGHTS_ELEMENTS} element limit; capture shorter inputs")
    scores = phi_q @ phi_k.transpose(-1, -2)  # (B, H, L, S)
    if causal:
        keep = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).tril(lk - lq)
        scores = scores.masked_fill(~keep, 0.0)
    return _safe_divide(scores, scores.sum(-1, keepdim=True))


class KernelizedAttention(MultiHeadAttention):
    """Base of kernel-feature kinds: MHA's projections, then ``phi`` features and the sums above.

    Subclasses implement :meth:`feature_map`, which returns this call's :class:`KernelFeatures`;
    :meth:`begin_forward` runs once per call before it. Masks: ``causal()`` and ``padding(...)``
    only (joined with ``&``). Cache: a :class:`RecurrentState` (causal decoding). Options shared
    by subclasses: ``chunk`` (default 128), the chunk length of the causal parallel form;
    ``noncausal_chunk`` (default 512), the key / query chunk length of the non-causal path; and
    MHA's ``num_kv_heads``, ``head_dim``, ``context_dim``, ``bias``, ``qk_norm``. ``rope``,
    ``alibi``, ``softcap`` and ``dropout`` act on softmax scores that these kinds never form:
    rejected.
    """

    supports_cache = True
    supports_arbitrary_masks = False
    kind_name = "kernelized"

    def __init__(self, dim: int, num_heads: int, *, chunk: int = 128,
                 noncausal_chunk: int = NONCAUSAL_CHUNK, **mha_options: Any) -> None:
        reject_options(f"{self.kind_name} attention", mha_options,
                       ("rope", "alibi", "softcap", "dropout"), "it never forms softmax scores")
        super().__init__(dim, num_heads, **mha_options)
        for name, value in (("chunk", chunk), ("noncausal_chunk", noncausal_chunk)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.chunk, self.noncausal_chunk = chunk, noncausal_chunk

    def begin_forward(self) -> None:
        """Called once per forward pass before any features (Performer's periodic redraw)."""

    @abstractmethod
    def feature_map(self, dtype: torch.dtype) -> KernelFeatures:
        """phi for this forward call, computing in ``dtype`` (weights fixed for its backward)."""

    def attend_heads(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                     cache: Any = None) -> Tensor:
        check_input(x, self.layout.dim)
        if cache is not None and not isinstance(cache, RecurrentState):
            raise ValueError(f"{self.kind_name} attention decodes with its own O(1) state: pass "
                             f"cache=RecurrentState(), not {type(cache).__name__}")
        if cache is not None and context is not None:
            raise ValueError("a decoding state is for causal self-attention; call without cache "
                             "for cross-attention")
        q, k, v, _ = self.project(x, context, None)  # (B, H, L, Dh), (B, Hkv, S, Dh)
        b, lq, lk = x.shape[0], q.shape[2], k.shape[2]
        seen = cache.position if cache is not None else 0
        parts = split_mask(mask, batch=b, lq=lq, lk=seen + lk, device=x.device,
                           kind=self.kind_name)
        if cache is not None and not parts.causal and lq > 1:
            raise ValueError(f"decoding {lq} tokens at once with a RecurrentState is causal; "
                             f"pass mask=masks.causal()")
        causal = parts.causal or cache is not None
        valid = None if parts.key_valid is None else parts.key_valid[:, -lk:]  # this call's keys
        self.begin_forward()
        features = self.feature_map(q.dtype)
        heads = self.layout.num_heads

        def full_maps() -> tuple[Tensor, Tensor]:
            """phi(q) (B, H, L, M) and phi(k) repeated to H heads, zero on padded keys."""
            phi_k = features.keys(k, valid, shift=not causal)[0]
            return features.queries(q), expand_kv(phi_k, heads)

        if not causal:
            out = chunked_kernel_attention(q, k, v, features, chunk=self.noncausal_chunk,
                                           key_valid=valid)
        else:
            phi_q, phi_k = full_maps()
            v = expand_kv(v, heads)  # (B, H, S, Dv)
            if cache is not None:
                if cache.owner not in (None, self._feature_id()):
                    raise ValueError("this RecurrentState was built with other features "
                                     "(redrawn or another layer); reset it")
                out, kv, norm = causal_kernel_attention(
                    phi_q, phi_k, v, chunk=self.chunk, kv0=cache.kv, normalizer0=cache.normalizer)
                cache.kv, cache.normalizer = kv, norm
                cache.position += lk
                cache.owner = self._feature_id()
            else:
                out = causal_kernel_attention(phi_q, phi_k, v, chunk=self.chunk)[0]

        def weights() -> Tensor:
            if cache is not None:
                raise ValueError("the implied weights of a decoding step need the earlier keys, "
                                 "which the recurrent state folded away; capture without cache")
            return kernel_attention_weights(*full_maps(), causal)

        return self.probe(out, v, weights)

    def _feature_id(self) -> int:
        return id(self)
