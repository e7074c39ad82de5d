"""The one entry point: ``attention(q, k, v, ...)``, dispatched to the best backend.

The engine sits above :mod:`attnkit.functional` (the math and the mask / bias algebra) and
:mod:`attnkit.backends` (the kernels): it validates a call, asks the dispatcher for a backend and
runs it.

Kinds whose math is not softmax attention over a mask have their own explicit entry points,
re-exported here so that layers call the engine only: :func:`kernel_attention` (kernel features,
``linear`` / ``performer``), :func:`span_ramp_attention` (adaptive span's ramp bias over the band
it leaves open) and :func:`split_mask` / :func:`allowed_key_counts` (what a kind that never forms
scores can honour of a mask). :func:`current_tuning` gives the kernels' tuning constants in
force (:mod:`attnkit.backends.tuning`, re-measured by ``attnkit bench tune``).

Shape legend: B batch, Hq / Hkv query / key-value heads, Lq / Lk lengths, D / Dv head dims.
"""

from __future__ import annotations

from typing import Literal, overload

from torch import Tensor

from attnkit.backends import dispatch
from attnkit.backends.dispatch import DispatchReport
from attnkit.backends.kernelized import (
    KernelFeatures,
    kernel_attention,
    kernel_attention_weights,
    kernel_feature_maps,
)
from attnkit.backends.mask_parts import MaskParts, allowed_key_counts, split_mask
from attnkit.backends.span_band import span_ramp_attention
from attnkit.backends.tuning import Tuning
from attnkit.backends.tuning import current as current_tuning
from attnkit.functional.bias import Bias
from attnkit.functional.masks import Mask
from attnkit.functional.math import attention_weights, validate

__all__ = ["KernelFeatures", "MaskParts", "Tuning", "allowed_key_counts", "attention",
           "current_tuning", "dispatch_report",
           "kernel_attention", "kernel_attention_weights", "kernel_feature_maps",
           "span_ramp_attention", "split_mask"]


@overload
def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Mask | None = ..., bias: Bias | None = ...,
              scale: float | None = ..., softcap: float | None = ..., dropout_p: float = ...,
              backend: str = ..., return_weights: Literal[False] = ...) -> Tensor: ...


@overload
def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Mask | None = ..., bias: Bias | None = ...,
              scale: float | None = ..., softcap: float | None = ..., dropout_p: float = ...,
              backend: str = ..., return_weights: Literal[True]) -> tuple[Tensor, Tensor]: ...


def attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Mask | None = None,
              bias: Bias | None = None, scale: float | None = None, softcap: float | None = None,
              dropout_p: float = 0.0, backend: str = "auto",
              return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Exact scaled dot-product attention with composable masks and score modifications.

    Args:
        q: (B, Hq, Lq, D) queries.
        k: (B, Hkv, Lk, D) keys; Hq must be a multiple of Hkv (GQA; MQA when Hkv == 1).
        v: (B, Hkv, Lk, Dv) values.
        mask: an :mod:`attnkit.masks` object (True = may attend), e.g. ``causal() & padding(n)``.
        bias: an :mod:`attnkit.bias` object added to the scaled scores (ALiBi, buckets, dense).
        scale: multiplies ``q @ k^T``; defaults to ``1 / sqrt(D)``.
        softcap: if set, scores become ``softcap * tanh(scores / softcap)`` (after the bias).
        dropout_p: dropout on the weights; pass 0 at evaluation.
        backend: ``"auto"`` or a name from :func:`attnkit.backends.list_backends`.
        return_weights: also return the (B, Hq, Lq, Lk) softmax weights (before dropout),
            recomputed when the backend does not produce them.

    Returns:
        out (B, Hq, Lq, Dv), and the weights if asked for. Rows with no allowed key are zero.

    Plain PyTorch equivalent::

        s = q @ k.repeat_interleave(Hq // Hkv, 1).transpose(-1, -2) * scale + bias
        s = softcap * tanh(s / softcap)
        p = softmax(s.masked_fill(~mask, -inf), -1).nan_to_num(0)
        out = dropout(p) @ v.repeat_interleave(Hq // Hkv, 1)
    """
    spec = validate(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap,
                    dropout_p=dropout_p)
    out = dispatch.select_backend(spec, backend).forward(spec)
    if return_weights:
        return out, attention_weights(spec)
    return out


def dispatch_report(q: Tensor, k: Tensor, v: Tensor, *, mask: Mask | None = None,
                    bias: Bias | None = None, scale: float | None = None,
                    softcap: float | None = None, dropout_p: float = 0.0,
                    backend: str = "auto") -> DispatchReport:
    """Which backend would run this call and every other backend's reasons (printable)."""
    spec = validate(q, k, v, mask=mask, bias=bias, scale=scale, softcap=softcap,
                    dropout_p=dropout_p)
    return dispatch.report(spec, backend)
