"""Differential attention (Ye et al., 2024, "Differential Transformer", arXiv:2410.05258).

Shape legend: B batch, L / S query / key length, H differential heads, Hkv key/value heads,
d = per-map head dim (default dim / (2H)), 2d = value width per head.

Each head splits its query and key into two halves and subtracts two softmax maps::

    [Q1; Q2] = x W_q,  [K1; K2] = c W_k,  V = c W_v                  # Q_i, K_i: (L, d), V: (S, 2d)
    A_i      = softmax(Q_i K_i^T / sqrt(d))
    lambda   = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init           # learned vectors (d,)
    head     = (A_1 - lambda A_2) V                                    # (L, 2d)
    head'    = (1 - lambda_init) * RMSNorm(head)                       # per-head norm, affine
    y        = W_o concat_h head'_h
    lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1)) for layer l = 1..N  (here: layer_index = l - 1)

Both maps are exact engine calls (any mask, GQA, KV cache): the 2H query halves attend with
the value heads repeated per pair, and since ``A_1 V - lambda A_2 V = (A_1 - lambda A_2) V`` the
difference is taken on the outputs, so no L x S matrix is formed. Projections, RoPE, QK-norm and
the cache come from :class:`MultiHeadAttention` built with 2H heads of width d.

Special case: with ``lambda = 0`` a head is ``(1 - lambda_init) RMSNorm(A_1 V)``, a single
softmax branch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.engine import attention
from attnkit.functional.masks import Mask
from attnkit.functional.math import attention_weights, validate
from attnkit.layers.base import merge_heads, split_heads
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["DifferentialAttention", "default_lambda_init"]


def default_lambda_init(layer_index: int) -> float:
    """The paper's depth schedule: 0.8 - 0.6 exp(-0.3 (l - 1)) with l = layer_index + 1."""
    if layer_index < 0:
        raise ValueError(f"layer_index counts layers from 0, got {layer_index}")
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


class DifferentialAttention(MultiHeadAttention):
    """Differential attention: two softmax maps subtracted with a learned lambda.

    Options:
        num_heads: differential heads H (each uses two query/key halves of width d).
        layer_index: 0-based depth of this layer in the model, sets lambda_init (default 0).
        lambda_init: override the depth schedule (default None = schedule).
        num_kv_heads: key/value heads (default H; GQA when it divides H).
        head_dim: d, the width of one query/key half (default dim // (2 H)).
        everything else as :class:`MultiHeadAttention` (bias, dropout, qk_norm, rope, softcap,
            backend). ``alibi`` is not supported.
    """

    def __init__(self, dim: int, num_heads: int, *, layer_index: int = 0,
                 lambda_init: float | None = None, num_kv_heads: int | None = None,
                 head_dim: int | None = None, **mha_options: Any) -> None:
        if mha_options.get("alibi"):
            raise ValueError("differential attention does not support alibi; use rope")
        if head_dim is None:
            if dim % (2 * num_heads):
                raise ValueError(f"dim={dim} is not divisible by 2 * num_heads={2 * num_heads}; "
                                 f"pass head_dim explicitly")
            head_dim = dim // (2 * num_heads)
        kv = num_heads if num_kv_heads is None else num_kv_heads
        super().__init__(dim, 2 * num_heads, num_kv_heads=2 * kv, head_dim=head_dim,
                         **mha_options)
        self.diff_heads, self.diff_kv_heads = num_heads, kv
        self.layer_index = layer_index
        self.lambda_init = default_lambda_init(layer_index) if lambda_init is None \
            else float(lambda_init)
        d = head_dim
        self.lambda_q1 = nn.Parameter(torch.randn(d) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(d) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(d) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(d) * 0.1)
        self.head_norm = nn.RMSNorm(2 * d, eps=1e-5)

    def lambda_value(self) -> Tensor:
        """exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init, a scalar tensor."""
        return (torch.exp(self.lambda_q1 @ self.lambda_k1)
                - torch.exp(self.lambda_q2 @ self.lambda_k2) + self.lambda_init)

    def wide_values(self, v: Tensor) -> Tensor:
        """(B, 2Hkv, S, d) value halves -> (B, Hkv, S, 2d) value heads."""
        return split_heads(merge_heads(v), self.diff_kv_heads)

    def attend_heads(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                     cache: Any = None) -> Tensor:
        q, k, v, mask = self.prepare(x, context, mask=mask, cache=cache)  # q: (B, 2H, L, d)
        values = self.wide_values(v)  # (B, Hkv, S, 2d)
        # Query half 2h + j uses key head (2h + j) // G2 and, like the paper's repeat_kv, value
        # head h // G = key head // 2; so each value head is repeated once per key-head pair.
        v_pairs = values.repeat_interleave(2, dim=1)  # (B, 2Hkv, S, 2d)
        # Fused kernels (torch's CPU flash kernel among them) need equal q/k and v widths;
        # zero-padding q and k to 2d leaves q . k unchanged and keeps memory linear in L.
        d = q.shape[-1]
        scale = d ** -0.5
        q, k = F.pad(q, (0, d)), F.pad(k, (0, d))  # (B, 2H|2Hkv, L|S, 2d)
        dropout_p = self.dropout if self.training else 0.0
        both = attention(q, k, v_pairs, mask=mask, scale=scale, softcap=self.softcap,
                         dropout_p=dropout_p, backend=self.backend)  # (B, 2H, L, 2d)
        both = both.unflatten(1, (self.diff_heads, 2))  # (B, H, 2, L, 2d)
        lam = self.lambda_value().to(both.dtype)
        out = both[:, :, 0] - lam * both[:, :, 1]  # (B, H, L, 2d)

        def weights() -> Tensor:
            spec = validate(q, k, v_pairs, mask=mask, bias=None, scale=scale,
                            softcap=self.softcap, dropout_p=0.0)
            maps = attention_weights(spec).unflatten(1, (self.diff_heads, 2))
            return maps[:, :, 0] - lam * maps[:, :, 1]  # (B, H, L, S)

        out = self.probe(out, values, weights)
        return self.head_norm(out) * (1.0 - self.lambda_init)

    def extra_repr(self) -> str:
        return (f"dim={self.layout.dim}, diff_heads={self.diff_heads}, "
                f"kv_heads={self.diff_kv_heads}, head_dim={self.layout.head_dim}, "
                f"layer_index={self.layer_index}, lambda_init={self.lambda_init:.4f}")
