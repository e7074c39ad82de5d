"""Nyströmformer (Xiong et al., 2021, "Nyströmformer: A Nyström-Based Algorithm for
Approximating Self-Attention", arXiv:2102.03902).

Shape legend: B batch, H heads, L / S query / key length, d head dim, m landmarks.

The softmax matrix is approximated from m landmarks, the means of m contiguous segments of the
queries and keys::

    Q~, K~ = segment_means(Q), segment_means(K)                         # (m, d)
    F~ = softmax(Q K~^T / sqrt(d))        (L, m)
    A~ = softmax(Q~ K~^T / sqrt(d))       (m, m)
    B~ = softmax(Q~ K^T / sqrt(d))        (m, S)
    out = F~ pinv(A~) (B~ V)              [+ depthwise conv of V over the length, optional]

pinv is the paper's iterative Moore-Penrose approximation (eq. 13, 6 iterations by default)::

    Z_0 = A^T / (||A||_1 ||A||_inf)
    Z_{j+1} = Z_j (13 I - A Z_j (15 I - A Z_j (7 I - A Z_j))) / 4

The two length-L products are attention calls: ``B~ V`` has m queries over the S keys and
``F~ Y`` has L queries over m landmark keys, so the engine's fused kernels run them forward and
backward and neither (L, m) nor (m, S) weights are stored (the implied weights are formed only
when captured).

Segments are as equal as possible when m does not divide L (lengths differ by at most one);
with L < m every token is its own landmark. Key padding zeroes padded keys (and, in
self-attention, queries) before the landmark means, as the authors' code does, and masks them
out of B~. Non-causal only; no KV cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnkit.engine import attention, split_mask
from attnkit.functional import masks
from attnkit.functional.masks import Mask
from attnkit.functional.math import check_weights_size, expand_kv, safe_softmax
from attnkit.layers.base import check_input, reject_options
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["NystromAttention", "iterative_pinv", "segment_means"]



def segment_means(x: Tensor, segments: int) -> Tensor:
    """Means of ``segments`` contiguous near-equal pieces along dim -2: (.., L, d) -> (.., m, d)."""
    length = x.shape[-2]
    if length % segments == 0:
        return x.unflatten(-2, (segments, length // segments)).mean(-2)
    bounds = torch.div(torch.arange(segments + 1, device=x.device) * length, segments,
                       rounding_mode="floor")  # (m + 1,) segment starts, last = L
    wide = x.to(torch.float64)  # prefix sums over long sequences lose digits in float32
    csum = torch.cat([torch.zeros_like(wide[..., :1, :]), wide.cumsum(-2)], dim=-2)
    sizes = (bounds[1:] - bounds[:-1]).to(torch.float64).unsqueeze(-1)  # (m, 1)
    return ((csum[..., bounds[1:], :] - csum[..., bounds[:-1], :]) / sizes).to(x.dtype)


def iterative_pinv(a: Tensor, iterations: int = 6) -> Tensor:
    """Approximate Moore-Penrose inverse of each (m, m) matrix in ``a`` (..., m, m)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    norm_1 = a.abs().sum(-2).amax(-1)  # max column sum, (...)
    norm_inf = a.abs().sum(-1).amax(-1)  # max row sum
    z = a.transpose(-1, -2) / (norm_1 * norm_inf)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(MultiHeadAttention):
    """Nyström approximation of softmax attention with segment-mean landmarks.

    Options:
        num_landmarks: m (default 64).
        pinv_iterations: iterations of the pseudo-inverse (default 6).
        conv_kernel: odd kernel size of the depthwise convolution skip over V (default None =
            off; the authors use 33).
        num_kv_heads, head_dim, context_dim, bias, qk_norm: as :class:`MultiHeadAttention`.
    Masks: ``padding(...)`` only. Non-causal; no KV cache.
    """

    supports_cache = False

    def __init__(self, dim: int, num_heads: int, *, num_landmarks: int = 64,
                 pinv_iterations: int = 6, conv_kernel: int | None = None,
                 **mha_options: Any) -> None:
        reject_options("nystrom", mha_options, ("rope", "alibi", "softcap", "dropout"))
        super().__init__(dim, num_heads, **mha_options)
        if num_landmarks < 1 or pinv_iterations < 0:
            raise ValueError(f"need num_landmarks >= 1 and pinv_iterations >= 0, got "
                             f"{num_landmarks}, {pinv_iterations}")
        if conv_kernel is not None and (conv_kernel < 1 or conv_kernel % 2 == 0):
            raise ValueError(f"conv_kernel must be a positive odd number or None, got "
                             f"{conv_kernel}")
        self.num_landmarks, self.pinv_iterations = num_landmarks, pinv_iterations
        heads = self.layout.num_heads
        self.conv = None if conv_kernel is None else nn.Conv2d(
            heads, heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0), groups=heads,
            bias=False)

    def attend_heads(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                     cache: Any = None) -> Tensor:
        check_input(x, self.layout.dim)
        self._reject_cache(cache)
        if self.conv is not None and context is not None:
            raise ValueError("the nystrom conv skip runs over the query positions and needs "
                             "self-attention; build it with conv_kernel=None for cross")
        q, k, v, _ = self.project(x, context, None)  # (B, H, L, d), (B, Hkv, S, d)
        heads = self.layout.num_heads
        b, lq, lk, d = x.shape[0], q.shape[2], k.shape[2], q.shape[3]
        parts = split_mask(mask, batch=b, lq=lq, lk=lk, device=x.device, kind="nystrom",
                           allow_causal=False)
        q_for_means, k_for_means, conv_values, key_mask = q, k, v, None
        if parts.key_valid is not None:
            # As the authors' code: padded keys (and, in self-attention, queries) are zeroed
            # before the landmark means, and padded values before the conv skip. B~ masks
            # padded keys, so the attention calls need no zeroed copies.
            valid = parts.key_valid.to(k.dtype)[:, None, :, None]  # (B, 1, S, 1)
            k_for_means = k * valid
            if context is None:
                q_for_means = q * valid
                if self.conv is not None:
                    conv_values = v * valid
            key_mask = masks.padding(parts.key_valid)
        q_land = segment_means(q_for_means, min(self.num_landmarks, lq))  # (B, H, m, d)
        k_land = expand_kv(segment_means(k_for_means, min(self.num_landmarks, lk)), heads)
        scale = d ** -0.5
        kernel_2 = torch.softmax((q_land * scale) @ k_land.transpose(-1, -2), -1)  # (B, H, m, m)
        pinv = iterative_pinv(kernel_2, self.pinv_iterations)  # (B, H, m, m)
        # F~ (pinv (B~ V)) from right to left, where B~ V = softmax(Q~ K^T / sqrt(d)) V and
        # F~ Y = softmax(Q K~^T / sqrt(d)) Y are attention calls with m queries or m keys: the
        # engine's fused kernels run them (forward and backward) without forming the (m, S) or
        # (L, m) weights.
        landmark_out = attention(q_land, k, v, mask=key_mask)  # (B, H, m, d): B~ V, GQA inside
        out = attention(q, k_land, pinv @ landmark_out)  # (B, H, L, d)

        def weights() -> Tensor:
            check_weights_size(lq, lk)
            kernel_1 = torch.softmax((q * scale) @ k_land.transpose(-1, -2), -1)  # (B, H, L, m)
            key_allowed = None if parts.key_valid is None else parts.key_valid[:, None, None, :]
            kernel_3 = safe_softmax((q_land * scale) @ expand_kv(k, heads).transpose(-1, -2),
                                    key_allowed)  # (B, H, m, S)
            return (kernel_1 @ pinv) @ kernel_3

        out = self.probe(out, expand_kv(v, heads), weights)
        if self.conv is not None:  # depthwise over the length, per head
            out = out + self.conv(expand_kv(conv_values, heads))
        return out

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_landmarks={self.num_landmarks}, "
                f"pinv_iterations={self.pinv_iterations}, conv={self.conv is not None}")
