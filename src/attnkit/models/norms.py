"""Normalization layers by name: LayerNorm (Ba et al., 2016), RMSNorm (Zhang & Sennrich, 2019)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["NORMS", "build_norm"]

NORMS: dict[str, Callable[[int, bool], nn.Module]] = {
    "layernorm": lambda dim, bias: nn.LayerNorm(dim, bias=bias),
    "rmsnorm": lambda dim, bias: nn.RMSNorm(dim),
}


def build_norm(name: str, dim: int, *, bias: bool = True) -> nn.Module:
    """A normalization over the last dim of width ``dim``."""
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; choose one of {sorted(NORMS)}")
    return NORMS[name](dim, bias)
