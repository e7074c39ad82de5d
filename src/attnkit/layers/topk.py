"""Explicit sparse attention (Zhao et al., 2019, "Explicit Sparse Transformer: Concentrated
Attention Through Explicit Selection", arXiv:1912.11637).

Shape legend: B batch, H heads, Hkv key/value heads, L / S query / key length, Dh head dim,
C query chunk.

Each query keeps only its k largest scores::

    P    = q k^T / sqrt(Dh)                        # (L, S), masked entries -inf
    t_i  = k-th largest value of row P_i
    P'_ij = P_ij if P_ij >= t_i else -inf          # ties with t_i are kept, as in the paper
    out  = softmax(P') v

Queries are processed in chunks of C rows so at most (B, H, C, S) scores exist at once; while
training each chunk is recomputed in the backward pass (activation checkpointing), so memory stays
O(C * S) instead of O(L * S). Compute is still quadratic.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from attnkit.functional.masks import Mask
from attnkit.functional.math import check_weights_size, expand_kv, safe_softmax
from attnkit.layers.base import reject_options
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["TopKAttention", "topk_attention"]



def _topk_weights(q: Tensor, k: Tensor, allowed: Tensor | None, top: int,
                  scale: float) -> Tensor:
    """Weights of one query chunk: q (B, H, C, D), k (B, H, S, D) -> (B, H, C, S)."""
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, C, S)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    if top < scores.shape[-1]:
        threshold = scores.topk(top, dim=-1).values[..., -1:]  # (B, H, C, 1)
        keep = scores >= threshold
        allowed = keep if allowed is None else allowed & keep
    return safe_softmax(scores, allowed)


def _chunk_output(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, top: int,
                  scale: float) -> Tensor:
    return _topk_weights(q, k, allowed, top, scale) @ v


def topk_attention(q: Tensor, k: Tensor, v: Tensor, *, top: int, mask: Mask | None = None,
                   chunk: int = 256, return_weights: bool = False) -> Tensor:
    """Top-k sparse attention: q (B, H, L, D), k/v (B, Hkv, S, D|Dv) -> (B, H, L, Dv).

    With ``return_weights`` returns the (B, H, L, S) weights instead of the output.
    """
    b, h, lq, d = q.shape
    lk = k.shape[2]
    k, v = expand_kv(k, h), expand_kv(v, h)
    scale = d ** -0.5
    if mask is not None:
        mask.check_shape(b, h, lq, lk)
    pieces = []
    for start in range(0, lq, chunk):
        stop = min(start + chunk, lq)
        allowed = None if mask is None else mask.tile(  # (B|1, H|1, C, S)
            torch.arange(start, stop, device=q.device), torch.arange(lk, device=q.device), lq, lk)
        q_chunk = q[:, :, start:stop]
        if return_weights:
            pieces.append(_topk_weights(q_chunk, k, allowed, top, scale))
        elif torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            pieces.append(checkpoint(_chunk_output, q_chunk, k, v, allowed, top, scale,
                                     use_reentrant=False))
        else:
            pieces.append(_chunk_output(q_chunk, k, v, allowed, top, scale))
    return torch.cat(pieces, dim=2)


class TopKAttention(MultiHeadAttention):
    """Multi-head attention where each query attends only to its ``top_k`` best-scoring keys.

    Options (besides :class:`MultiHeadAttention`'s projections, GQA, RoPE, QK-norm and KV cache,
    same defaults; ``alibi``, ``softcap`` and ``dropout`` are not supported):
        top_k: keys kept per query (default 32; ``top_k >= S`` is exact softmax attention).
        chunk: queries per chunk (default 256): peak memory ~ B * H * chunk * S scores.
    Any mask is honoured.
    """

    def __init__(self, dim: int, num_heads: int, *, top_k: int = 32, chunk: int = 256,
                 **mha_options: Any) -> None:
        reject_options("topk attention", mha_options, ("alibi", "softcap", "dropout"))
        super().__init__(dim, num_heads, **mha_options)
        if top_k < 1 or chunk < 1:
            raise ValueError(f"top_k and chunk must be >= 1, got top_k={top_k}, chunk={chunk}")
        self.top_k, self.chunk = top_k, chunk

    def attend_heads(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                     cache: Any = None) -> Tensor:
        q, k, v, mask = self.prepare(x, context, mask=mask, cache=cache)  # (B, H|Hkv, L|S, Dh)
        out = topk_attention(q, k, v, top=self.top_k, mask=mask, chunk=self.chunk)

        def weights() -> Tensor:
            check_weights_size(q.shape[2], k.shape[2], "topk weights")
            return topk_attention(q, k, v, top=self.top_k, mask=mask, chunk=self.chunk,
                                  return_weights=True)

        return self.probe(out, v, weights)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, top_k={self.top_k}, chunk={self.chunk}"
