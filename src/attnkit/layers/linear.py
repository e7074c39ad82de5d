"""Linear attention (Katharopoulos et al., 2020, "Transformers are RNNs: Fast Autoregressive
Transformers with Linear Attention", arXiv:2006.16236).

Shape legend: B batch, H heads, L / S query / key length, Dh head dim.

Softmax similarity is replaced by a dot product of positive features phi(x) = elu(x) + 1::

    out_i = phi(q_i)^T sum_j phi(k_j) v_j^T / phi(q_i)^T sum_j phi(k_j)          (non-causal)

and the causal form sums over j <= i only, computed in chunks for training and as an RNN with
state (sum phi(k) v^T, sum phi(k)) for decoding (:class:`RecurrentState`). Cost is O(L Dh^2).
No 1 / sqrt(Dh) scale: it would cancel in the ratio only for a linear map, not through elu.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit.layers.kernelized import KernelFeatures, KernelizedAttention

__all__ = ["EluFeatures", "LinearAttention", "elu_feature_map"]


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 > 0, elementwise (the paper's eq. 7)."""
    return F.elu(x).add_(1.0)  # elu's backward reads its input, so its output may change


class EluFeatures(KernelFeatures):
    """phi(x) = elu(x) + 1 for queries and keys; no weights and no shift.

    Its derivative is 1 where x > 0 (phi = x + 1 > 1) and exp(x) = phi where x <= 0, that is
    min(phi, 1): the backward needs phi only.
    """

    def queries(self, q: Tensor) -> Tensor:
        return elu_feature_map(q)

    def keys(self, k: Tensor, valid: Tensor | None = None, *, shift: bool = False
             ) -> tuple[Tensor, Tensor | None]:
        # elu(x) + 1 <= max(x, 0) + 1: no overflow to guard against, so never shifted.
        phi = elu_feature_map(k)
        if valid is not None:
            phi = phi * valid[:, None, :, None].to(phi.dtype)
        return phi, None

    def queries_backward(self, q: Tensor, phi: Tensor, grad_phi: Tensor) -> Tensor:
        return grad_phi * phi.clamp(max=1.0)

    def keys_backward(self, k: Tensor, phi: Tensor, grad_phi: Tensor) -> Tensor:
        return grad_phi * phi.clamp(max=1.0)  # padded keys have phi = 0: no gradient


class LinearAttention(KernelizedAttention):
    """Linear attention with the elu + 1 feature map; causal training and O(1) decoding.

    Options:
        chunk: chunk length of the causal parallel form (default 128).
        noncausal_chunk: key / query chunk length of the non-causal path (default 512).
        num_kv_heads, head_dim, context_dim, bias, qk_norm: as :class:`MultiHeadAttention`.
    Masks: ``causal()`` and ``padding(...)``. Cache: ``RecurrentState()``.
    """

    kind_name = "linear"

    def feature_map(self, dtype: torch.dtype) -> KernelFeatures:
        return EluFeatures()
