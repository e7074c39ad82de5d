"""Positional helpers: rotary embeddings (RoPE) and sinusoidal tables.

Shape legend: B batch, H heads, L length, D head dim (even for RoPE).

Two RoPE conventions exist and checkpoints are not interchangeable between them:
- ``interleaved=False`` ("half split", GPT-NeoX / Llama in Hugging Face): pairs are
  ``(x[..., i], x[..., i + D/2])``;
- ``interleaved=True`` (the RoFormer paper, GPT-J, Meta's Llama): pairs are
  ``(x[..., 2i], x[..., 2i + 1])``.
Both rotate pair ``i`` by angle ``position * base^(-2i/D)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["RotaryEmbedding", "apply_rotary", "rotary_angles", "sinusoidal_table"]


def rotary_angles(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Rotation angles (..., L, D/2) for integer ``positions`` (..., L), in float64 for accuracy.

    ``positions`` is (L,) when every sequence shares them, or (B, L) (left-padded batches)."""
    if dim % 2:
        raise ValueError(f"rotary embeddings need an even head dim, got {dim}")
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device)
                        / dim)
    return positions.to(torch.float64)[..., None] * inv_freq


def apply_rotary(x: Tensor, angles: Tensor, *, interleaved: bool = False) -> Tensor:
    """Rotate ``x`` (B, H, L, D) (or (..., L, D)) by ``angles`` (L, D/2), or per sequence by
    ``angles`` (B, L, D/2).

    Equivalent plain math for the half-split convention::

        x1, x2 = x[..., :D//2], x[..., D//2:]
        out = cat(x1 * cos - x2 * sin, x2 * cos + x1 * sin)
    """
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, L, D/2): the same rotation for every head
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        r1, r2 = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        return torch.stack([r1, r2], dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class RotaryEmbedding(nn.Module):
    """RoPE for queries and keys at given positions (module form, no parameters)."""

    def __init__(self, head_dim: int, *, base: float = 10000.0, interleaved: bool = False) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
        self.head_dim, self.base, self.interleaved = head_dim, base, interleaved

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, H, L, D); positions: (L,) or (B, L) absolute positions -> (B, H, L, D)."""
        return apply_rotary(x, rotary_angles(positions, self.head_dim, self.base),
                            interleaved=self.interleaved)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, interleaved={self.interleaved}"


def sinusoidal_table(length: int, dim: int, base: float = 10000.0) -> Tensor:
    """The fixed sin/cos position table of Vaswani et al. (2017): (L, dim), float32.

    ``table[p, 2i] = sin(p / base^(2i/dim))``, ``table[p, 2i+1] = cos(p / base^(2i/dim))``.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal tables need an even dim, got {dim}")
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(base) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.float()
