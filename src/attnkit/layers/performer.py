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
range, the query features subtract each row's maximum (a per-query factor that cancels in the
ratio) and, non-causally, the key features subtract one global maximum (also cancels); causal
features keep raw exponents so a decoding state stays consistent across steps.

The features are a buffer saved with the state dict; :meth:`PerformerAttention.redraw_features`
draws new ones (the paper redraws periodically during training; ``redraw_interval`` does it
every N training forward passes).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attnkit.layers.kernelized import KernelizedAttention

__all__ = ["PerformerAttention", "orthogonal_gaussian_features"]


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


class PerformerAttention(KernelizedAttention):
    """FAVOR+ attention with positive orthogonal random features.

    Options:
        num_features: M random features (default 256).
        redraw_interval: redraw the features every N training forward passes (default None:
            only when :meth:`redraw_features` is called).
        seed: seed of the first draw (default None: torch's global generator).
        chunk: chunk length of the causal parallel form (default 128).
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

    def features(self, q: Tensor, k: Tensor, *, causal: bool) -> tuple[Tensor, Tensor]:
        if self.training and self.redraw_interval is not None:
            if self.training_calls and self.training_calls % self.redraw_interval == 0:
                self.redraw_features()
            self.training_calls += 1
        d = q.shape[-1]
        w = self.projection.to(q.dtype)  # (M, d)
        q, k = q * d ** -0.25, k * d ** -0.25
        # log-features, updated in place (the (B, H, L, M) maps dominate time and memory);
        # the 1 / sqrt(M) factor enters as -log(M) / 2 before the exponential.
        half_log_m = 0.5 * math.log(self.num_features)
        q_log = q @ w.T  # (B, H, L, M)
        q_log.sub_((q * q).sum(-1, keepdim=True) / 2 + half_log_m)
        q_log.sub_(q_log.amax(-1, keepdim=True).detach())
        k_log = k @ w.T  # (B, Hkv, S, M)
        k_log.sub_((k * k).sum(-1, keepdim=True) / 2 + half_log_m)
        if not causal:
            k_log.sub_(k_log.amax(dim=(-1, -2), keepdim=True).detach())
        return q_log.exp_(), k_log.exp_()

    def _feature_id(self) -> int:
        return hash((id(self), self.draws))

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_features={self.num_features}, "
                f"redraw_interval={self.redraw_interval}")
