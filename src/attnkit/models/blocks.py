"""Residual Transformer blocks and stacks. Modules receive their parts; builders wire them.

Shape legend: B batch, L length, Lc context length, D model width.

Pre-norm (``norm_first=True``, GPT-2 / ViT)::

    x = x + dropout(attn(norm1(x)));  x = x + dropout(mlp(norm2(x)))

Post-norm (``norm_first=False``, Vaswani et al., 2017)::

    x = norm1(x + dropout(attn(x)));  x = norm2(x + dropout(mlp(x)))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from attnkit.functional.masks import Mask
from attnkit.layers.base import AttentionLayer

__all__ = ["TransformerBlock", "TransformerStack"]


class TransformerBlock(nn.Module):
    """Self-attention (+ optional cross-attention) and an MLP, each in a residual branch."""

    def __init__(self, *, attention: AttentionLayer, mlp: nn.Module, attention_norm: nn.Module,
                 mlp_norm: nn.Module, dropout: float = 0.0, norm_first: bool = True,
                 cross_attention: AttentionLayer | None = None,
                 cross_norm: nn.Module | None = None) -> None:
        super().__init__()
        if (cross_attention is None) != (cross_norm is None):
            raise ValueError("give cross_attention and cross_norm together, or neither")
        self.attention, self.attention_norm = attention, attention_norm
        self.cross_attention, self.cross_norm = cross_attention, cross_norm
        self.mlp, self.mlp_norm = mlp, mlp_norm
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def _residual(self, x: Tensor, branch: Callable[[Tensor], Tensor], norm: nn.Module) -> Tensor:
        if self.norm_first:
            return x + self.dropout(branch(norm(x)))
        return norm(x + self.dropout(branch(x)))

    def forward(self, x: Tensor, *, mask: Mask | None = None, context: Tensor | None = None,
                context_mask: Mask | None = None, cache: Any = None) -> Tensor:
        """x: (B, L, D); context: (B, Lc, D) for cross-attention -> (B, L, D)."""
        x = self._residual(x, lambda h: self.attention(h, mask=mask, cache=cache),
                           self.attention_norm)
        if self.cross_attention is not None and self.cross_norm is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass context (B, Lc, D)")
            cross = self.cross_attention
            x = self._residual(x, lambda h: cross(h, context, mask=context_mask),
                               self.cross_norm)
        return self._residual(x, self.mlp, self.mlp_norm)


class TransformerStack(nn.Module):
    """Blocks in sequence, then a final norm (pre-norm stacks need it; post-norm: Identity)."""

    def __init__(self, *, blocks: Sequence[TransformerBlock], final_norm: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm

    def forward(self, x: Tensor, *, mask: Mask | None = None, context: Tensor | None = None,
                context_mask: Mask | None = None, caches: Sequence[Any] | None = None) -> Tensor:
        """x: (B, L, D) -> (B, L, D). ``caches``: one KV cache per block, or None."""
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"got {len(caches)} caches for {len(self.blocks)} blocks")
        for i, block in enumerate(self.blocks):
            x = block(x, mask=mask, context=context, context_mask=context_mask,
                      cache=None if caches is None else caches[i])
        return self.final_norm(x)
