"""Tiny transformer models for the explain tests and examples (not for real use).

Shape legend: B batch, L tokens, Ls / Lt source / target tokens, D width, C classes, V vocab.

They are built from :class:`attnkit.layers.MultiHeadAttention` directly so explanations can be
checked independently of the models package.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnkit import masks
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["ToyBlock", "ToyClassifier", "ToySeq2Seq"]


class ToyBlock(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention, MLP, each with a residual."""

    def __init__(self, *, dim: int, heads: int, cross: bool = False, backend: str = "auto",
                 kv_heads: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, num_kv_heads=kv_heads, backend=backend)
        self.norm_cross = nn.LayerNorm(dim) if cross else None
        self.cross_attn = MultiHeadAttention(dim, heads, backend=backend) if cross else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor, context: Tensor | None = None,
                mask: masks.Mask | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        if self.cross_attn is not None and self.norm_cross is not None:
            x = x + self.cross_attn(self.norm_cross(x), context)
        return x + self.mlp(self.norm2(x))


class ToyClassifier(nn.Module):
    """Token ids (B, L) -> class logits (B, C), read from a prepended class token."""

    def __init__(self, *, vocab: int = 20, dim: int = 16, heads: int = 2, depth: int = 2,
                 classes: int = 3, backend: str = "auto", kv_heads: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.blocks = nn.ModuleList(ToyBlock(dim=dim, heads=heads, backend=backend,
                                             kv_heads=kv_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)  # (B, L, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + L, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


class ToySeq2Seq(nn.Module):
    """(source (B, Ls), target (B, Lt)) token ids -> next-token logits (B, Lt, V)."""

    def __init__(self, *, vocab: int = 20, dim: int = 16, heads: int = 2, depth: int = 2,
                 backend: str = "auto") -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.encoder = nn.ModuleList(ToyBlock(dim=dim, heads=heads, backend=backend)
                                     for _ in range(depth))
        self.decoder = nn.ModuleList(ToyBlock(dim=dim, heads=heads, cross=True, backend=backend)
                                     for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        memory = self.embed(source)
        for block in self.encoder:
            memory = block(memory)
        y = self.embed(target)
        for block in self.decoder:
            y = block(y, memory, mask=masks.causal())
        return self.head(self.norm(y))
