"""Linformer (Wang et al., 2020, "Linformer: Self-Attention with Linear Complexity",
arXiv:2006.04768).

Shape legend: B batch, H heads, Hkv key/value heads, L / S query / key length, d head dim,
k projected length, N = ``max_length``.

Keys and values are projected along the length axis by learned matrices E, F (k, N) before
softmax attention, so the score matrix is L x k::

    K' = E[:, :S] K,   V' = F[:, :S] V                                # (k, d)
    out = softmax(Q K'^T / sqrt(d)) V'                                # (L, d)
        = (softmax(Q K'^T / sqrt(d)) F[:, :S]) V                      # implied (L, S) weights

Shorter inputs use the first S columns of E and F (as the fairseq implementation does). Each
position of K' mixes every key, so the method is non-causal only; key padding zeroes the padded
keys and values before the projection. E and F are shared by all heads of the layer (the
paper's "headwise sharing"); ``share_kv=True`` also ties F = E ("key-value sharing").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnkit.engine import attention, split_mask
from attnkit.functional.masks import Mask
from attnkit.functional.math import check_weights_size, expand_kv, safe_softmax
from attnkit.layers.base import check_input, reject_options
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["LinformerAttention"]



class LinformerAttention(MultiHeadAttention):
    """Softmax attention over keys and values compressed along the length axis.

    Options:
        max_length: N, the longest key sequence (required; E and F have N columns).
        projected_length: k, the compressed length (default 256).
        share_kv: use one projection for keys and values (default False).
        num_kv_heads, head_dim, context_dim, bias, qk_norm, backend: as
            :class:`MultiHeadAttention`. Non-causal: causal masks and KV caches raise.
    Masks: ``padding(...)`` only.
    """

    supports_cache = False

    def __init__(self, dim: int, num_heads: int, *, max_length: int, projected_length: int = 256,
                 share_kv: bool = False, **mha_options: Any) -> None:
        reject_options("linformer", mha_options, ("rope", "alibi", "softcap"))
        super().__init__(dim, num_heads, **mha_options)
        if max_length < 1 or projected_length < 1:
            raise ValueError(f"max_length and projected_length must be >= 1, got "
                             f"max_length={max_length}, projected_length={projected_length}")
        self.max_length, self.projected_length = max_length, projected_length
        std = projected_length ** -0.5
        self.key_length_proj = nn.Parameter(torch.randn(projected_length, max_length) * std)
        self.value_length_proj = None if share_kv else nn.Parameter(
            torch.randn(projected_length, max_length) * std)

    def length_projections(self, length: int) -> tuple[Tensor, Tensor]:
        """E[:, :S] and F[:, :S], each (k, S)."""
        e = self.key_length_proj[:, :length]
        f = e if self.value_length_proj is None else self.value_length_proj[:, :length]
        return e, f

    def attend_heads(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                     cache: Any = None) -> Tensor:
        check_input(x, self.layout.dim)
        if cache is not None:
            raise ValueError("linformer has no KV cache: every compressed key mixes all "
                             "positions, so it cannot decode incrementally; use kind 'mha', "
                             "'local' or 'linear'")
        q, k, v, _ = self.project(x, context, None)  # (B, H, L, d), (B, Hkv, S, d)
        b, lq, lk = x.shape[0], q.shape[2], k.shape[2]
        if lk > self.max_length:
            raise ValueError(f"linformer was built for max_length={self.max_length} keys but got "
                             f"{lk}; build it with max_length >= {lk}")
        parts = split_mask(mask, batch=b, lq=lq, lk=lk, device=x.device, kind="linformer",
                           allow_causal=False)
        if parts.key_valid is not None:
            valid = parts.key_valid.to(k.dtype)[:, None, :, None]  # (B, 1, S, 1)
            k, v = k * valid, v * valid
        e, f = (t.to(k.dtype) for t in self.length_projections(lk))
        k_short = e @ k  # (B, Hkv, k, d)
        v_short = f @ v
        dropout_p = self.dropout if self.training else 0.0
        out = attention(q, k_short, v_short, dropout_p=dropout_p, backend=self.backend)

        def weights() -> Tensor:
            check_weights_size(lq, lk)
            scores = q @ expand_kv(k_short, q.shape[1]).transpose(-1, -2) * q.shape[-1] ** -0.5
            return safe_softmax(scores, None) @ f  # (B, H, L, S)

        return self.probe(out, v, weights)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, max_length={self.max_length}, "
                f"projected_length={self.projected_length}, "
                f"share_kv={self.value_length_proj is None}")
