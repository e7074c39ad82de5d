"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers").

Shape legend: B batch, H heads, L sequence length (self-attention: Lq = Lk = L), N layers.

Each layer's heads are fused into one (B, L, L) matrix, the residual connection is modelled as
half identity, rows are renormalized, and the layers are multiplied from the input upwards::

    A_l  = fuse_h(attn_l)                          # mean / max / min over heads
    Ã_l  = normalize_rows(0.5 * A_l + 0.5 * I)
    R    = Ã_N @ ... @ Ã_2 @ Ã_1                   # R[i, j]: how much output i draws on input j

Causal (decoder) models: earlier tokens are visible to more positions, so they accumulate
rollout for a structural reason rather than a learned one. With ``causal_normalize`` the rollout
is divided by the rollout of *uniform* causal attention (each row spreading evenly over its
receptive field, the "nothing learned" baseline) and rows are renormalized, so a value above the
row's uniform share means the model attends there more than the causal structure alone implies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Literal

import torch
from torch import Tensor

__all__ = ["HEAD_FUSIONS", "HeadFusion", "attention_rollout", "causal_receptive_baseline",
           "fuse_heads", "is_causal", "residual_normalize"]

HeadFusion = Literal["mean", "max", "min"]

HEAD_FUSIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": lambda a: a.mean(dim=1),
    "max": lambda a: a.amax(dim=1),
    "min": lambda a: a.amin(dim=1),
}


def fuse_heads(weights: Tensor, fusion: str = "mean") -> Tensor:
    """(B, H, L, L) -> (B, L, L) by ``fusion`` over heads."""
    if fusion not in HEAD_FUSIONS:
        raise ValueError(f"unknown head fusion {fusion!r}; choose one of {sorted(HEAD_FUSIONS)}")
    if weights.dim() != 4:
        raise ValueError(f"attention weights must be (batch, heads, Lq, Lk), got shape "
                         f"{tuple(weights.shape)}")
    return HEAD_FUSIONS[fusion](weights)


def _safe_row_normalize(x: Tensor) -> Tensor:
    total = x.sum(dim=-1, keepdim=True)
    return x / torch.where(total > 0, total, torch.ones_like(total))


def _discard_lowest(fused: Tensor, ratio: float) -> Tensor:
    """Zero the ``ratio`` fraction of smallest off-diagonal entries of each (L, L) map."""
    b, length, _ = fused.shape
    count = int((length * length - length) * ratio)
    if count == 0:
        return fused
    ranked = fused.clone()
    ranked.diagonal(dim1=1, dim2=2).fill_(torch.inf)  # the diagonal is never discarded
    lowest = ranked.reshape(b, -1).topk(count, largest=False).indices  # (B, count)
    return fused.reshape(b, -1).scatter(1, lowest, 0.0).view(b, length, length)


def residual_normalize(fused: Tensor, residual_weight: float = 0.5) -> Tensor:
    """Ã = normalize_rows((1 - w) * A + w * I): the residual stream as attention to oneself.
    fused: (..., L, L)."""
    mixed = (1.0 - residual_weight) * fused
    mixed.diagonal(dim1=-2, dim2=-1).add_(residual_weight)  # + w * I, in the input's dtype
    return _safe_row_normalize(mixed)


def is_causal(weights: Tensor, tol: float = 0.0) -> bool:
    """Whether every map puts no weight above the diagonal (a decoder's self-attention)."""
    if weights.shape[-1] != weights.shape[-2] or weights.shape[-1] < 2:
        return False
    return bool(torch.triu(weights.abs(), diagonal=1).amax() <= tol)


def causal_receptive_baseline(length: int, layers: int, residual_weight: float = 0.5,
                              dtype: torch.dtype = torch.float32) -> Tensor:
    """Rollout (L, L) of uniform causal attention: what the causal structure alone produces."""
    return _uniform_causal_rollout(torch.ones(length, length, dtype=dtype), layers,
                                   residual_weight)


def _uniform_causal_rollout(ones: Tensor, layers: int, residual_weight: float) -> Tensor:
    """:func:`causal_receptive_baseline` of ``ones`` (..., L, L), in its dtype and device."""
    uniform = _safe_row_normalize(ones.tril())  # row i spreads evenly over keys 0..i
    return torch.linalg.matrix_power(residual_normalize(uniform, residual_weight), layers)


def attention_rollout(weights: Sequence[Tensor], *, head_fusion: str = "mean",
                      discard_ratio: float = 0.0, residual_weight: float = 0.5,
                      causal_normalize: bool | None = None,
                      cumulative: bool = False) -> Tensor:
    """Roll attention out through the layers.

    Args:
        weights: per layer, from input to output, (B, H, L, L) self-attention weights.
        head_fusion: "mean", "max" or "min" over heads.
        discard_ratio: fraction of the smallest off-diagonal fused entries of each layer to
            zero before adding the identity, to suppress low-attention noise.
        residual_weight: weight of the identity (0.5 in the paper).
        causal_normalize: divide by the uniform-causal baseline (see module docstring);
            None = do it when every layer is causal.
        cumulative: return the rollout after every layer, (N, B, L, L), instead of the last.

    Returns:
        (B, L, L) rollout ``R`` (rows sum to 1): row i is output position i's attribution over
        input positions. The class-token attribution of a ViT is ``R[:, 0, 1:]``.

    Plain PyTorch::

        R = torch.eye(L)
        for A in weights:
            A = A.mean(1) * 0.5 + torch.eye(L) * 0.5
            R = (A / A.sum(-1, keepdim=True)) @ R
    """
    if not weights:
        raise ValueError("attention_rollout needs at least one layer of weights")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    if not 0.0 <= residual_weight <= 1.0:
        raise ValueError(f"residual_weight must be in [0, 1], got {residual_weight}")
    square = weights[0].shape[-1:] * 2  # (L, L)
    if any(w.shape[-2:] != square for w in weights):
        raise ValueError(f"rollout needs square self-attention maps of one length, got shapes "
                         f"{[tuple(w.shape) for w in weights]}; pass only the self-attention "
                         f"layers of one stream")
    if causal_normalize is None:
        causal_normalize = all(is_causal(w, tol=1e-6) for w in weights)
    per_layer = (residual_normalize(_discard_lowest(fuse_heads(w.float(), head_fusion),
                                                    discard_ratio), residual_weight)
                 for w in weights)  # Ã_l (B, L, L)
    # R_l = Ã_l @ R_(l-1), starting from R_1 = Ã_1 (the identity times Ã_1)
    steps = list(accumulate(per_layer, lambda below, layer: layer @ below))
    if causal_normalize:
        steps = [_causal_normalized(r, i + 1, residual_weight) for i, r in enumerate(steps)]
    return torch.stack(steps) if cumulative else steps[-1]


def _causal_normalized(rollout: Tensor, layers: int, residual_weight: float) -> Tensor:
    base = _uniform_causal_rollout(torch.ones_like(rollout), layers, residual_weight)
    ratio = torch.where(base > 0, rollout / torch.where(base > 0, base, torch.ones_like(base)),
                        torch.zeros_like(rollout))
    return _safe_row_normalize(ratio)
