"""Shared core of kernel-feature attention (``linear``, ``performer``).

Shape legend: B batch, H query heads, Hkv key/value heads, L / S query / key length,
M feature count, Dv value head dim, C chunk length, n = ceil(L / C) chunks.

With a positive feature map phi, softmax(q k^T) is replaced by phi(q) phi(k)^T, and the product
is re-associated so no L x S matrix is formed (Katharopoulos et al., 2020, eq. 4-6)::

    non-causal:  out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / phi(q_i)^T (sum_j phi(k_j))
    causal:      sums over j <= i:  S_i = S_{i-1} + phi(k_i) v_i^T,  z_i = z_{i-1} + phi(k_i)
                 out_i = phi(q_i)^T S_i / phi(q_i)^T z_i

Non-causal training and inference never form a full (L, M) feature map: keys and queries are
read in chunks, with a hand-written backward. The math runs in
:func:`attnkit.engine.kernel_attention` (:mod:`attnkit.backends.kernelized`); this layer
projects, builds the feature map and keeps the decoding state.

Causal training uses the chunked parallel form: inside a chunk a masked C x C product, across
chunks the prefix sums of per-chunk states (memory O(n M Dv + L C)). Decoding keeps only
``(S, z)`` in a :class:`RecurrentState`: O(1) memory and work per token. Padded keys get
``phi(k) = 0``; a query that sees no key returns zeros.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from attnkit.engine import (
    KernelFeatures,
    current_tuning,
    kernel_attention,
    kernel_attention_weights,
    kernel_feature_maps,
    split_mask,
)
from attnkit.functional.masks import Mask
from attnkit.functional.math import expand_kv
from attnkit.layers.base import check_input, reject_options
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["KernelFeatures", "KernelizedAttention", "RecurrentState"]


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


class KernelizedAttention(MultiHeadAttention):
    """Base of kernel-feature kinds: MHA's projections, then ``phi`` features and the sums above.

    Subclasses implement :meth:`feature_map`, which returns this call's :class:`KernelFeatures`;
    :meth:`begin_forward` runs once per call before it. Masks: ``causal()`` and ``padding(...)``
    only (joined with ``&``). Cache: a :class:`RecurrentState` (causal decoding). Options shared
    by subclasses: ``chunk`` (default 128, tuning ``kernel_causal_chunk``), the chunk length of
    the causal parallel form; ``noncausal_chunk`` (default 512, tuning
    ``kernel_noncausal_chunk``), the key / query chunk length of the non-causal path; and
    MHA's ``num_kv_heads``, ``head_dim``, ``context_dim``, ``bias``, ``qk_norm``. ``rope``,
    ``alibi``, ``softcap`` and ``dropout`` act on softmax scores that these kinds never form:
    rejected.
    """

    supports_cache = True
    kind_name = "kernelized"

    def __init__(self, dim: int, num_heads: int, *, chunk: int | None = None,
                 noncausal_chunk: int | None = None, **mha_options: Any) -> None:
        reject_options(f"{self.kind_name} attention", mha_options,
                       ("rope", "alibi", "softcap", "dropout"), "it never forms softmax scores")
        super().__init__(dim, num_heads, **mha_options)
        defaults = current_tuning()
        chunk = defaults.kernel_causal_chunk if chunk is None else chunk
        if noncausal_chunk is None:
            noncausal_chunk = defaults.kernel_noncausal_chunk
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
        state = None
        if cache is not None:
            if cache.owner not in (None, self._feature_id()):
                raise ValueError("this RecurrentState was built with other features "
                                 "(redrawn or another layer); reset it")
            if cache.kv is not None and cache.normalizer is not None:
                state = (cache.kv, cache.normalizer)
        chunk = self.chunk if causal else self.noncausal_chunk
        out, final = kernel_attention(q, k, v, features, causal=causal, chunk=chunk,
                                      key_valid=valid, state=state)
        if cache is not None and final is not None:
            cache.kv, cache.normalizer = final
            cache.position += lk
            cache.owner = self._feature_id()

        def weights() -> Tensor:
            if cache is not None:
                raise ValueError("the implied weights of a decoding step need the earlier keys, "
                                 "which the recurrent state folded away; capture without cache")
            phi_q, phi_k = kernel_feature_maps(q, k, features, key_valid=valid, causal=causal)
            return kernel_attention_weights(phi_q, phi_k, causal)

        return self.probe(out, expand_kv(v, self.layout.num_heads) if causal else v, weights)

    def _feature_id(self) -> int:
        return id(self)
