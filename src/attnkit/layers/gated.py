"""Gated attention (Qiu et al., 2025, "Gated Attention for Large Language Models:
Non-linearity, Sparsity, and Attention-Sink-Free", position G1).

Shape legend: B batch, L length, H heads, Dh head dim.

    o_h = softmax(q_h k_h^T / sqrt(Dh)) v_h              # (B, H, L, Dh), as in MHA
    g   = sigmoid(x W_g + b_g)                           # from the layer input x
          elementwise: (B, L, H * Dh)    headwise: (B, L, H), one scalar per head
    y   = W_o concat_h (g_h * o_h)                       # gate before the output projection

Special case: with the gate saturated to 1 (W_g = 0, b_g -> +inf) the layer is exactly
:class:`~attnkit.layers.MultiHeadAttention`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnkit.functional.masks import Mask
from attnkit.layers.base import merge_heads, split_heads
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["GatedAttention"]

GATE_GRANULARITIES = ("elementwise", "headwise")


class GatedAttention(MultiHeadAttention):
    """Multi-head attention whose per-head output is gated by sigmoid(x W_g) (Qiu et al., 2025).

    Options (besides every :class:`MultiHeadAttention` option, same defaults):
        gate: ``"elementwise"`` (default; one gate per output channel, the paper's best) or
            ``"headwise"`` (one scalar gate per head and token).
    The gate projection has a bias iff ``bias`` (default True).
    """

    def __init__(self, dim: int, num_heads: int, *, gate: str = "elementwise",
                 **mha_options: Any) -> None:
        super().__init__(dim, num_heads, **mha_options)
        if gate not in GATE_GRANULARITIES:
            raise ValueError(f"gate must be one of {GATE_GRANULARITIES}, got {gate!r}")
        self.gate = gate
        lay = self.layout
        width = lay.num_heads * lay.head_dim if gate == "elementwise" else lay.num_heads
        self.gate_proj = nn.Linear(dim, width, bias=self.q_proj.bias is not None)

    def gate_values(self, x: Tensor) -> Tensor:
        """sigmoid(x W_g + b_g) shaped to broadcast over the heads: (B, H, L, Dh | 1)."""
        g = torch.sigmoid(self.gate_proj(x))
        if self.gate == "elementwise":
            return split_heads(g, self.layout.num_heads)  # (B, H, L, Dh)
        return g.transpose(1, 2).unsqueeze(-1)  # (B, H, L, 1)

    def forward(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                cache: Any = None) -> Tensor:
        out = self.attend_heads(x, context, mask=mask, cache=cache)  # (B, H, L, Dh)
        return self.out_proj(merge_heads(out * self.gate_values(x)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gate={self.gate!r}"
