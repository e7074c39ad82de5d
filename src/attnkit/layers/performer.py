"""Performer / FAVOR+ (Choromanski et al., 2021, "Rethinking Attention with Performers",
arXiv:2009.14794).

Shape legend: B batch, H heads, L / S query / key length, d head dim, M random features.

Softmax attention is approximated without bias by positive random features::

    exp(q . k / sqrt(d)) = E_w[phi(q') phi(k')],   q' = q / d^(1/4),  k' = k / d^(1/4)
    phi(x) = exp(W x - |x|^2 / 2) / sqrt(M)          # W: (M, d), rows w_r
    out_i  = phi(q'_i)^T sum_j phi(k'_j) v_j^T / phi(q'_i)^T sum_j phi(k'_j)

W has orthogonal rows: blocks of d rows from the QR decomposition of a Gaussian matrix, each row
rescaled to the norm of an independent Gaussian vector (chi distribution with d degrees of
freedom), so every w_r is marginally N(0, I_d) and the estimator stays unbiased. For numerical
range, each query's features subtract that row's maximum exponent (a per-query factor that
cancels in the ratio, as |q'|^2 / 2 does, so that term is never computed). Non-causally, each
chunk of keys subtracts its own maximum exponent and the chunk sums are rescaled to the largest
as they are added (one factor per head, which cancels too). Causal key features keep raw
exponents so a decoding state stays consistent across steps.

The features are a buffer saved with the state dict; :meth:`PerformerAttention.redraw_features`
draws new ones (the paper redraws periodically during training; ``redraw_interval`` does it
every N training forward passes).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attnkit.functional.math import finite_or
from attnkit.layers.kernelized import KernelFeatures, KernelizedAttention

__all__ = ["FavorFeatures", "PerformerAttention", "orthogonal_gaussian_features"]

_LOG2_E = 1.0 / math.log(2.0)


def orthogonal_gaussian_features(num_features: int, dim: int, *,
                                 generator: torch.Generator | None = None) -> Tensor:
    """(M, d) matrix whose rows are N(0, I) marginally and orthogonal within blocks of d rows."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        # Fix the column signs so Q is Haar-distributed (raw QR output is not, and its bias
        # shows up as an error floor of the estimator at large M).
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
        blocks.append(q.T)  # rows orthonormal
    rows = torch.cat(blocks, 0)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator, dtype=torch.float64).norm(dim=1)
    return rows * norms[:, None]


class FavorFeatures(KernelFeatures):
    """phi(x) = exp(w . x' - |x'|^2 / 2) / sqrt(M) for one call's W (M, d), x' = x / d^(1/4).

    Exponents are formed in base 2 (W and the norm term pre-multiplied by log2(e)): exp2 runs
    about twice as fast as exp on CPU, and the factor costs nothing inside the GEMM. Derivative:
    d phi / d(w . x') = phi, so dx' = (d phi * phi) W.
    """

    def __init__(self, projection: Tensor, num_features: int) -> None:
        d = projection.shape[1]
        self.num_features = num_features
        self.weight = projection * d ** -0.25  # W / d^(1/4): the input scaling folded in, (M, d)
        self.weight_log2 = self.weight * _LOG2_E
        self.half_norm_factor = 0.5 / math.sqrt(d)  # |x'|^2 / 2 = |x|^2 * this

    def queries(self, q: Tensor) -> Tensor:
        # Every factor of phi(q) but exp(w.q') is the same across a row's features and cancels
        # in num / den, and so does exp(-max) (detached), which keeps the exponents <= 0.
        # In place, not softmax: a second (C, M) buffer per chunk measured slower.
        log2_phi = q @ self.weight_log2.T  # (B, H, C, M)
        return log2_phi.sub_(log2_phi.detach().amax(-1, keepdim=True)).exp2_()

    def keys(self, k: Tensor, valid: Tensor | None = None, *, shift: bool = False
             ) -> tuple[Tensor, Tensor | None]:
        # The norm term is one number per key: it joins the pass that subtracts the shift, so
        # the GEMM stays d wide (65 wide, with the norm as an extra column, ran slower).
        row_term = torch.linalg.vector_norm(k, dim=-1, keepdim=True).square()
        row_term = row_term.mul_(self.half_norm_factor * _LOG2_E)  # (B, Hkv, S, 1)
        if valid is not None:  # padded keys: phi = exp2(-inf) = 0, and they set no shift
            row_term.masked_fill_(~valid[:, None, :, None], float("inf"))
        log2_phi = k @ self.weight_log2.T  # (B, Hkv, S, M), without the norm term
        if not shift:
            # Causal / decoding: raw exponents so a state stays consistent across calls.
            row_term += 0.5 * math.log2(self.num_features)
            return log2_phi.sub_(row_term).exp2_(), None
        # Non-causal: one detached maximum per (B, Hkv) (a factor that cancels in num / den)
        # keeps exp() in range. The row term is constant along a row, so the maximum of
        # (row max - row term) is the maximum of the whole exponent map.
        top = (log2_phi.detach().amax(-1, keepdim=True) - row_term.detach()).amax((-1, -2))
        ref = finite_or(top)
        return log2_phi.sub_(row_term.add_(ref[..., None, None])).exp2_(), top / _LOG2_E

    def queries_backward(self, q: Tensor, phi: Tensor, grad_phi: Tensor) -> Tensor:
        return (grad_phi * phi) @ self.weight

    def keys_backward(self, k: Tensor, phi: Tensor, grad_phi: Tensor) -> Tensor:
        # d/dk (w.k' - |k'|^2 / 2) = w' - 2 c k with c = half_norm_factor, for every feature.
        grad_exponent = grad_phi * phi  # (B, Hkv, C, M)
        grad = grad_exponent @ self.weight
        return grad.addcmul_(k, grad_exponent.sum(-1, keepdim=True),
                             value=-2.0 * self.half_norm_factor)


class PerformerAttention(KernelizedAttention):
    """FAVOR+ attention with positive orthogonal random features.

    Options:
        num_features: M random features (default 256).
        redraw_interval: redraw the features every N training forward passes (default None:
            only when :meth:`redraw_features` is called).
        seed: seed of the first draw (default None: torch's global generator).
        chunk: chunk length of the causal parallel form (default 128).
        noncausal_chunk: key / query chunk length of the non-causal path (default 512).
        num_kv_heads, head_dim, context_dim, bias, qk_norm: as :class:`MultiHeadAttention`.
    Masks: ``causal()`` and ``padding(...)``. Cache: ``RecurrentState()``.
    """

    kind_name = "performer"
    projection: Tensor  # (M, d) random feature matrix, a buffer

    def __init__(self, dim: int, num_heads: int, *, num_features: int = 256,
                 redraw_interval: int | None = None, seed: int | None = None,
                 **options: Any) -> None:
        super().__init__(dim, num_heads, **options)
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if redraw_interval is not None and redraw_interval < 1:
            raise ValueError(f"redraw_interval must be >= 1 or None, got {redraw_interval}")
        self.num_features, self.redraw_interval = num_features, redraw_interval
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.register_buffer("projection", orthogonal_gaussian_features(
            num_features, self.layout.head_dim, generator=generator).float())
        self.draws = 0  # how many times the features were drawn after construction
        self.training_calls = 0

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Draw a fresh orthogonal random feature matrix (in place, same device and dtype)."""
        fresh = orthogonal_gaussian_features(self.num_features, self.layout.head_dim,
                                             generator=generator)
        self.projection.copy_(fresh.to(self.projection))
        self.draws += 1

    def begin_forward(self) -> None:
        if self.training and self.redraw_interval is not None:
            if self.training_calls and self.training_calls % self.redraw_interval == 0:
                self.redraw_features()
            self.training_calls += 1

    def feature_map(self, dtype: torch.dtype) -> KernelFeatures:
        return FavorFeatures(self.projection.to(dtype), self.num_features)

    def _feature_id(self) -> int:
        return hash((id(self), self.draws))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_features={self.num_features}, "
                f"redraw_interval={self.redraw_interval}")
