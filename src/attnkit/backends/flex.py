"""torch FlexAttention (``torch.nn.attention.flex_attention``) compiled with ``torch.compile``.

Masks become a ``BlockMask`` (built from the mask's ``mask_mod``) and biases / softcap a
``score_mod``. Compilation costs seconds on the first call of each shape, so this backend is only
used when asked for by name (``backend="flex"``) or after :func:`allow_in_auto`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from attnkit.backends.base import Backend, Capabilities
from attnkit.functional.math import AttentionSpec

__all__ = ["FLEX_RECOMPILE_LIMIT", "MIN_CUDA_HEAD_DIM", "FlexBackend", "allow_in_auto",
           "allowed_in_auto", "compiled_flex", "cuda_head_dim_reasons", "flex_available"]

_ALLOW_IN_AUTO = False

#: Recompilations allowed for the compiled FlexAttention. Every shape and mask compiles anew;
#: past dynamo's default of 8 flex_attention silently falls back to an unfused path that
#: materializes all scores. Applied around this function's calls only, never process-wide.
FLEX_RECOMPILE_LIMIT = 256

#: The smallest head dim FlexAttention's Triton kernels take ("embedding dimension ... must be
#: at least 16").
MIN_CUDA_HEAD_DIM = 16


def allow_in_auto(allowed: bool = True) -> None:
    """Opt in (or out) of FlexAttention, and its compilation, for ``backend="auto"``."""
    global _ALLOW_IN_AUTO
    _ALLOW_IN_AUTO = allowed


def allowed_in_auto() -> bool:
    """Whether :func:`allow_in_auto` opted FlexAttention in for ``backend="auto"``."""
    return _ALLOW_IN_AUTO


def flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def compiled_flex() -> Callable[..., Any]:
    """``flex_attention`` compiled with ``torch.compile(dynamic=False)``, run with a raised
    recompile limit (:data:`FLEX_RECOMPILE_LIMIT`) that holds during its calls only."""
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    dynamo_config = torch._dynamo.config
    limit: dict[str, Any] = ({"recompile_limit": FLEX_RECOMPILE_LIMIT}
             if hasattr(dynamo_config, "recompile_limit") else {})

    def run(*args: Any, **kwargs: Any) -> Any:
        with dynamo_config.patch(**limit):
            return compiled(*args, **kwargs)

    return run


class FlexBackend(Backend):
    """torch's FlexAttention, compiled; opt-in because compiling takes seconds per shape.

    Limits (torch 2.13): no backward on CPU (FlexAttention raises for CPU inputs that require
    grad), no float64 in the compiled kernels, no dropout, no gradients into biases. The
    ``BlockMask`` is rebuilt on every call (it depends on the lengths); callers that repeat one
    shape can build it once with ``torch.nn.attention.flex_attention.create_block_mask``.
    """

    name = "flex"
    capabilities = Capabilities(
        dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}), dropout=False,
        bias_grad=False)

    def extra_reasons(self, spec: AttentionSpec) -> list[str]:
        reasons = []
        if not flex_available():
            reasons.append(f"torch {torch.__version__} has no FlexAttention")
        if spec.needs_grad and spec.q.device.type == "cpu":
            # torch raises "FlexAttention does not support backward on CPU" at the first call.
            reasons.append("backward not supported on CPU (FlexAttention is forward-only there)")
        if spec.q.device.type == "cuda":
            reasons.extend(cuda_head_dim_reasons(spec))
        return reasons

    def forward(self, spec: AttentionSpec) -> Tensor:
        from torch.nn.attention.flex_attention import create_block_mask

        block_mask = None
        if spec.mask is not None:
            block_mask = create_block_mask(
                spec.mask.mask_mod(spec.lq, spec.lk), B=spec.mask.batch_size,
                H=spec.mask.num_heads, Q_LEN=spec.lq, KV_LEN=spec.lk, device=spec.q.device)
        score_mod = _score_mod(spec)
        q, k, v = spec.q, spec.k, spec.v
        if not spec.needs_grad:
            # FlexAttention refuses CPU tensors that require grad even under no_grad.
            q, k, v = q.detach(), k.detach(), v.detach()
        out = compiled_flex()(q, k, v, score_mod=score_mod,
                               block_mask=block_mask, scale=spec.scale,
                               enable_gqa=spec.heads != spec.kv_heads)
        return out  # rows with no allowed key are zeros already (FlexAttention's definition)


def cuda_head_dim_reasons(spec: AttentionSpec) -> list[str]:
    """Why the CUDA kernels cannot take the head dims of ``spec`` (the smaller of q/k and v);
    empty if they can."""
    head_dim = min(spec.q.shape[-1], spec.v.shape[-1])
    if head_dim < MIN_CUDA_HEAD_DIM:
        return [f"head dim {head_dim} < {MIN_CUDA_HEAD_DIM} not supported on CUDA"]
    return []


def _score_mod(spec: AttentionSpec) -> Any:
    bias_mod = spec.bias.score_mod(spec.lq, spec.lk) if spec.bias is not None else None
    cap = spec.softcap
    if bias_mod is None and cap is None:
        return None

    def mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        if bias_mod is not None:
            score = bias_mod(score, b, h, q_idx, kv_idx)
        if cap is not None:
            score = cap * torch.tanh(score / cap)
        return score

    return mod
