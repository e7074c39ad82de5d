"""Scalable-Softmax attention (Nakanishi, 2025, "Scalable-Softmax Is Superior for Attention").

Shape legend: B batch, L / S query / key length, H heads, Dh head dim.

Softmax over n keys flattens as n grows ("attention fading"). SSMax replaces it by

    SSMax(z)_j = n^(s z_j) / sum_j' n^(s z_j') = softmax((s_h log n_i) z_i)_j
    z_i = q_i k^T / sqrt(Dh)

with a learned scalar ``s_h`` per head and ``n_i`` the number of keys query ``i`` may attend to
(``i + 1`` under a causal mask, the real length under padding, ``S`` otherwise). Since the factor
is per (head, query) row, it is applied by scaling the queries, and the exact engine (any mask,
any backend, KV cache) does the rest.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnkit.engine import allowed_key_counts
from attnkit.functional.masks import Mask
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["ScalableSoftmaxAttention"]


class ScalableSoftmaxAttention(MultiHeadAttention):
    """MHA with Scalable-Softmax: logits times ``s_h * log(n_i)`` (Nakanishi, 2025).

    Options (besides every :class:`MultiHeadAttention` option, same defaults):
        s_init: initial value of the per-head scale ``s`` (default 0.43, the value the paper uses
            to illustrate SSMax; ``s log n = 1`` recovers plain softmax at ``n = e^(1/s)``).
    """

    def __init__(self, dim: int, num_heads: int, *, s_init: float = 0.43,
                 **mha_options: Any) -> None:
        super().__init__(dim, num_heads, **mha_options)
        self.s = nn.Parameter(torch.full((self.layout.num_heads,), float(s_init)))

    def logit_factor(self, q: Tensor, k: Tensor, mask: Mask | None) -> Tensor:
        """``s_h log n_i``: (B|1, H, Lq, 1) factor on each query's logits."""
        b, h, lq, _ = q.shape
        counts = allowed_key_counts(mask, batch=b, heads=h, lq=lq, lk=k.shape[2], device=q.device)
        work = torch.promote_types(q.dtype, torch.float32)  # bf16/fp16 -> fp32, fp64 stays
        log_n = torch.log(counts.to(work).clamp(min=1.0))  # a row with <= 1 key: factor 0
        # CUDA autocast runs log in float32 whatever its input; cast back so q keeps its dtype.
        return (self.s.to(work).view(1, -1, 1, 1) * log_n).to(q.dtype)

    def scale_queries(self, q: Tensor, k: Tensor, mask: Mask | None) -> Tensor:
        return q * self.logit_factor(q, k, mask)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ssmax"
