"""Position-wise feed-forward networks: GELU MLP and SwiGLU.

Shape legend: B batch, L length, D model width, F hidden width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLPS", "GeluMLP", "SwiGLU", "build_mlp"]


class GeluMLP(nn.Module):
    """``W2 · dropout(GELU(W1 x))`` (Hendrycks & Gimpel, 2016; BERT / GPT-2 / ViT)."""

    def __init__(self, *, dim: int, hidden: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        return self.down(self.dropout(F.gelu(self.up(x))))  # hidden (B, L, F)


class SwiGLU(nn.Module):
    """``W2 · dropout(SiLU(W_gate x) * (W_up x))`` (Shazeer, 2020, "GLU Variants")."""

    def __init__(self, *, dim: int, hidden: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        return self.down(self.dropout(F.silu(self.gate(x)) * self.up(x)))  # hidden (B, L, F)


MLPS: dict[str, Callable[..., nn.Module]] = {"gelu": GeluMLP, "swiglu": SwiGLU}


def build_mlp(name: str, *, dim: int, hidden: int, dropout: float = 0.0,
              bias: bool = True) -> nn.Module:
    if name not in MLPS:
        raise ValueError(f"unknown mlp {name!r}; choose one of {sorted(MLPS)}")
    return MLPS[name](dim=dim, hidden=hidden, dropout=dropout, bias=bias)
