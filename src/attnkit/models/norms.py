"""Normalization layers by name: LayerNorm (Ba et al., 2016), RMSNorm (Zhang & Sennrich, 2019)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["NORMS", "build_norm"]

NORMS: dict[str, Callable[[int, bool, float], nn.Module]] = {
    "layernorm": lambda dim, bias, eps: nn.LayerNorm(dim, eps=eps, bias=bias),
    "rmsnorm": lambda dim, bias, eps: nn.RMSNorm(dim, eps=eps),
}


def build_norm(name: str, dim: int, *, bias: bool = True, eps: float = 1e-5) -> nn.Module:
    """A normalization over the last dim of width ``dim``; ``eps`` keeps the division finite
    (1e-5 is PyTorch's default; BERT and ViT checkpoints were trained with 1e-12)."""
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; choose one of {sorted(NORMS)}")
    return NORMS[name](dim, bias, eps)
