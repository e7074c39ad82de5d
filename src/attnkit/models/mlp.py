"""Position-wise feed-forward networks: GELU MLP and SwiGLU.

Shape legend: B batch, L length, D model width, F hidden width.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MLPS", "GeluMLP", "SwiGLU", "build_mlp"]


class GeluMLP(nn.Module):
    """``W2 · dropout(GELU(W1 x))`` (Hendrycks & Gimpel, 2016; BERT / GPT-2 / ViT).

    ``approximate``: ``"none"`` (exact erf GELU: BERT, ViT) or ``"tanh"`` (the tanh
    approximation GPT-2 was trained with, ``gelu_new`` in Hugging Face configs).
    """

    def __init__(self, *, dim: int, hidden: int, dropout: float = 0.0, bias: bool = True,
                 approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, D) -> (B, L, D)."""
        hidden = F.gelu(self.up(x), approximate=self.approximate)  # (B, L, F)
        return self.down(self.dropout(hidden))

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


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


MLPS: dict[str, Callable[..., nn.Module]] = {
    "gelu": GeluMLP,
    "gelu_tanh": partial(GeluMLP, approximate="tanh"),
    "swiglu": SwiGLU,
}


def build_mlp(name: str, *, dim: int, hidden: int, dropout: float = 0.0,
              bias: bool = True) -> nn.Module:
    if name not in MLPS:
        raise ValueError(f"unknown mlp {name!r}; choose one of {sorted(MLPS)}")
    return MLPS[name](dim=dim, hidden=hidden, dropout=dropout, bias=bias)
