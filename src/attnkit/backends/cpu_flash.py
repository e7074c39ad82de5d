"""torch's fused CPU flash-attention kernel, wrapped once.

``aten._scaled_dot_product_flash_attention_for_cpu`` (and its backward) is private to torch: its
signature may change between releases. This module is the only place that names it; everything
else calls :func:`flash_forward` / :func:`flash_backward` after :func:`fused_kernel_available`
said yes, and falls back to plain PyTorch otherwise.

Shape legend: N leading (batch or items), H heads, Lq / Lk lengths, D / Dv head dims (the kernel
needs Dv == D).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

__all__ = ["backward_op", "flash_backward", "flash_forward", "forward_op",
           "fused_kernel_available"]


def forward_op() -> Any:
    """The private forward op (a function, so tests can count its calls)."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def backward_op() -> Any:
    """The private backward op."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


@functools.lru_cache(maxsize=1)
def fused_kernel_available() -> bool:
    """Whether this torch has the fused CPU flash kernel with the signature used here."""
    try:
        # A private generator: the probe must not move torch's global RNG (dropout, resume).
        q = torch.randn(1, 1, 2, 4, generator=torch.Generator().manual_seed(0))
        out, lse = forward_op()(q, q, q, 0.0, False, attn_mask=torch.zeros(1, 1, 2, 2),
                                scale=0.5)
        backward_op()(out, q, q, q, out, lse, 0.0, False, attn_mask=None, scale=0.5)
        return tuple(out.shape) == (1, 1, 2, 4) and tuple(lse.shape) == (1, 1, 2)
    except (AttributeError, RuntimeError, TypeError):
        return False


def flash_forward(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, attn_mask: Tensor | None,
                  scale: float) -> tuple[Tensor, Tensor]:
    """out (N, H, Lq, Dv) and row log-sum-exp (N, H, Lq) of q (N, H, Lq, D), k / v (N, H, Lk, D).

    ``attn_mask`` is additive (N|1, H|1, Lq, Lk); ``causal`` is the kernel's top-left
    ``is_causal``. A row whose keys are all ``-inf`` has an lse of 0 and an output that depends
    on the torch build (zeros on torch 2.13's CPU kernel, NaN in others): callers mask such rows
    themselves.
    """
    out, lse = forward_op()(q, k, v, 0.0, causal, attn_mask=attn_mask, scale=scale)
    return out, lse


def flash_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                   *, causal: bool, attn_mask: Tensor | None, scale: float
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """dq, dk, dv of :func:`flash_forward` given the (global) ``out`` and ``lse`` rows."""
    dq, dk, dv = backward_op()(grad_out, q, k, v, out, lse, 0.0, causal, attn_mask=attn_mask,
                               scale=scale)
    return dq, dk, dv
