"""Plain float64 helpers for the attention-kind tests: projections read from a layer's weights.

Every test transcribes its paper's formula itself; only the (B, L, dim) -> per-head projection
bookkeeping, identical for all kinds, lives here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["heads_of", "linear64", "merge64", "project64", "softmax_attention64"]


def linear64(layer: nn.Linear, x: Tensor) -> Tensor:
    """x W^T + b in float64."""
    out = x.double() @ layer.weight.double().T
    return out if layer.bias is None else out + layer.bias.double()


def heads_of(t: Tensor, heads: int) -> Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    b, length, width = t.shape
    return t.reshape(b, length, heads, width // heads).permute(0, 2, 1, 3)


def merge64(t: Tensor) -> Tensor:
    """(B, H, L, d) -> (B, L, H * d)."""
    b, h, length, d = t.shape
    return t.permute(0, 2, 1, 3).reshape(b, length, h * d)


def project64(layer: nn.Module, x: Tensor, heads: int, kv_heads: int,
              context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """q (B, H, L, d) and k, v repeated to H heads (B, H, S, d), all float64."""
    source = x if context is None else context
    q = heads_of(linear64(layer.q_proj, x), heads)
    k = heads_of(linear64(layer.k_proj, source), kv_heads)
    v = heads_of(linear64(layer.v_proj, source), kv_heads)
    groups = heads // kv_heads
    return q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)


def softmax_attention64(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None = None
                        ) -> Tensor:
    """softmax(q k^T / sqrt(d)) v with a boolean mask (True = may attend)."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1).nan_to_num(0.0) @ v


def padding_case(kind: str, length: int) -> Tensor:
    """Key validity (2, L) for the chunked-path tests: "none", "lengths" (the second sequence
    ends at 21) or "holes" (padding inside and across chunks of 8). Needs L > 21."""
    valid = torch.ones(2, length, dtype=torch.bool)
    if kind == "lengths":
        valid[1, 21:] = False
    elif kind == "holes":
        valid[0, :16] = False
        valid[1, 8:16] = False
    return valid


def assert_same_gradients(got: Tensor, expected: Tensor, inputs: list[Tensor]) -> None:
    """Both outputs, pulled back along one random cotangent, give the same gradients."""
    cotangent = torch.randn_like(got)
    got_grads = torch.autograd.grad((got * cotangent).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * cotangent).sum(), inputs)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e)
