"""Plain-math attention: the readable definition every backend is tested against.

Shape legend:
    B   batch            Hq / Hkv  query / key-value heads (GQA when Hq is a multiple of Hkv)
    Lq  query length     Lk        key length
    D   q/k head dim     Dv        value head dim

Definition (what every backend computes)::

    s = (q @ k^T) * scale + bias                 # (B, Hq, Lq, Lk)
    s = softcap * tanh(s / softcap)              # if softcap
    s = s.masked_fill(~mask, -inf)
    p = softmax(s, -1), rows with no allowed key -> 0
    out = dropout(p) @ v                         # (B, Hq, Lq, Dv)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attnkit.functional.bias import Bias
from attnkit.functional.masks import Mask

__all__ = ["MAX_WEIGHTS_ELEMENTS", "AttentionSpec", "attention_weights", "check_weights_size",
           "expand_kv", "finite_or", "reference_attention", "safe_softmax", "validate"]

#: Largest Lq * Lk for which a layer materializes the (implied) attention weights on request
#: (explanations); beyond it :func:`check_weights_size` raises.
MAX_WEIGHTS_ELEMENTS = 4096 * 4096


def check_weights_size(lq: int, lk: int, what: str = "the implied attention matrix") -> None:
    """Raise ValueError if ``Lq x Lk`` weights exceed :data:`MAX_WEIGHTS_ELEMENTS`."""
    if lq * lk > MAX_WEIGHTS_ELEMENTS:
        raise ValueError(f"{what} of {lq} x {lk} exceeds the {MAX_WEIGHTS_ELEMENTS} element "
                         f"limit; capture shorter inputs")


def finite_or(x: Tensor, fill: float = 0.0) -> Tensor:
    """``x`` with every non-finite entry replaced by ``fill``.

    Row maxima and log-sum-exps are ``-inf`` for rows with no allowed key: 0 keeps
    ``exp(s - m)`` finite, ``+inf`` makes ``exp(s - lse)`` exactly 0 in a backward.
    """
    return torch.where(torch.isfinite(x), x, torch.full_like(x, fill))


@dataclass(frozen=True)
class AttentionSpec:
    """One attention call, validated: the tensors and every modification of the scores."""

    q: Tensor  # (B, Hq, Lq, D)
    k: Tensor  # (B, Hkv, Lk, D)
    v: Tensor  # (B, Hkv, Lk, Dv)
    mask: Mask | None = None  # which pairs may attend; None = all
    bias: Bias | None = None  # additive score bias, before softcap
    scale: float = 1.0  # multiplies q @ k^T
    softcap: float | None = None  # tanh capping of scores
    dropout_p: float = 0.0  # dropout on the weights (training only)

    # Sizes stay as torch gives them (symbolic while torch.export / torch.compile trace), so an
    # exported graph keeps its batch and length axes dynamic; int() would pin them.
    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def heads(self) -> int:
        return self.q.shape[1]

    @property
    def kv_heads(self) -> int:
        return self.k.shape[1]

    @property
    def lq(self) -> int:
        return self.q.shape[2]

    @property
    def lk(self) -> int:
        return self.k.shape[2]

    @property
    def needs_grad(self) -> bool:
        """Whether autograd will need gradients through this call."""
        if not torch.is_grad_enabled():
            return False
        tensors = [self.q, self.k, self.v, *(self.bias.tensors() if self.bias else ())]
        return any(t.requires_grad for t in tensors)


def validate(q: Tensor, k: Tensor, v: Tensor, *, mask: Mask | None, bias: Bias | None,
             scale: float | None, softcap: float | None, dropout_p: float) -> AttentionSpec:
    """Check shapes, dtypes and options; return the normalized call or raise ValueError."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, length, head_dim), got shape "
                             f"{tuple(t.shape)}; use x.view(B, L, H, D).transpose(1, 2)")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}; "
                         f"cast them with .to(q.dtype)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    bq, hq, _, d = q.shape
    bk, hk, lk, dk = k.shape
    bv, hv, lv, _ = v.shape
    if not (bq == bk == bv):
        raise ValueError(f"batch sizes differ: q has {bq}, k has {bk}, v has {bv}")
    if hk != hv:
        raise ValueError(f"k has {hk} heads but v has {hv}; keys and values need the same heads")
    if hk == 0 or hq % hk:
        raise ValueError(f"q has {hq} heads, k has {hk}; the query heads must be a multiple of "
                         f"the key heads (GQA)")
    if d != dk:
        raise ValueError(f"q head dim is {d} but k head dim is {dk}; they must match")
    if lk != lv:
        raise ValueError(f"k has {lk} positions but v has {lv}; they must match")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if softcap is not None and not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"softcap must be a positive finite number or None, got {softcap}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if mask is not None:
        if not isinstance(mask, Mask):
            raise TypeError(f"mask must be an attnkit.masks.Mask (e.g. masks.dense(bool_tensor)), "
                            f"got {type(mask).__name__}")
        mask.check_shape(bq, hq, q.shape[2], lk)
        mask = mask.on_device(q.device)
    if bias is not None:
        if not isinstance(bias, Bias):
            raise TypeError(f"bias must be an attnkit.bias.Bias (e.g. bias.dense(tensor)), got "
                            f"{type(bias).__name__}")
        bias.check_shape(bq, hq, q.shape[2], lk)
        bias = bias.on_device(q.device)
    return AttentionSpec(q, k, v, mask, bias, scale, softcap, float(dropout_p))


def expand_kv(x: Tensor, query_heads: int) -> Tensor:
    """Repeat key/value heads for GQA: (B, Hkv, L, D) -> (B, Hq, L, D)."""
    groups = query_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def safe_softmax(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """Softmax over the last dim where rows with no allowed entry give zeros, not NaN.

    Gradients stay finite too: masked entries never see ``-inf`` arithmetic. Without a mask the
    scores are finite and torch's fused softmax runs (one output, and in backward one gradient,
    instead of four full-size temporaries).
    """
    if scores.shape[-1] == 0:  # no keys at all: empty weights, so the output rows are zero
        return scores
    if allowed is None:
        return torch.softmax(scores, -1)
    scores = scores.masked_fill(~allowed, -math.inf)
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = finite_or(row_max)
    exp = torch.exp(scores - row_max)
    total = exp.sum(dim=-1, keepdim=True)
    return exp / torch.where(total > 0, total, torch.ones_like(total))


def modified_scores(spec: AttentionSpec) -> Tensor:
    """Scores after scale, bias and softcap, before masking: (B, Hq, Lq, Lk)."""
    k = expand_kv(spec.k, spec.heads)
    scores = (spec.q @ k.mT) * spec.scale
    if spec.bias is not None:
        scores = scores + spec.bias.dense(spec.lq, spec.lk, scores.device).to(scores.dtype)
    if spec.softcap is not None:
        scores = spec.softcap * torch.tanh(scores / spec.softcap)
    return scores


def attention_weights(spec: AttentionSpec) -> Tensor:
    """Softmax weights (B, Hq, Lq, Lk) of the call, before dropout."""
    allowed = None if spec.mask is None else spec.mask.dense(spec.lq, spec.lk, spec.q.device)
    return safe_softmax(modified_scores(spec), allowed)


def reference_attention(spec: AttentionSpec) -> tuple[Tensor, Tensor]:
    """Plain math: returns (out (B, Hq, Lq, Dv), weights (B, Hq, Lq, Lk) before dropout)."""
    weights = attention_weights(spec)
    dropped = weights
    if spec.dropout_p > 0:
        dropped = torch.nn.functional.dropout(weights, p=spec.dropout_p)
    return dropped @ expand_kv(spec.v, spec.heads), weights
