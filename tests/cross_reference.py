"""Cross-attention of every attention kind, transcribed in float64 from each kind's definition.

``x`` (B, L, dim) gives the queries, ``context`` (B, S, dim) the keys and values; S != L, so
positional rules (windows, span ramps) use the bottom-right alignment of attnkit's masks: query
``i`` sits at key position ``i + S - L``. Each function returns the layer's output (B, L, dim).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import oracle
from kinds_reference import heads_of, linear64, merge64, project64
from test_differential import reference as differential_reference
from test_nystrom import landmarks, pinv_paper
from test_performer import favor


def _qkv(layer: Any, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return project64(layer, x, layer.layout.num_heads, layer.layout.num_kv_heads, context)


def _out(layer: Any, heads: Tensor) -> Tensor:
    return linear64(layer.out_proj, merge64(heads))


def _scores(q: Tensor, k: Tensor) -> Tensor:
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


def mha(layer: Any, x: Tensor, context: Tensor) -> Tensor:
    return _out(layer, oracle.attention(*_qkv(layer, x, context))[0])


def gated(layer: Any, x: Tensor, context: Tensor) -> Tensor:
    """Each head's output times sigmoid(x W_g + b_g) of the *query* token."""
    gate = torch.sigmoid(linear64(layer.gate_proj, x))  # (B, L, H * d) or (B, L, H)
    heads = oracle.attention(*_qkv(layer, x, context))[0]  # (B, H, L, d)
    g = heads_of(gate, heads.shape[1]) if gate.shape[-1] != heads.shape[1] else \
        gate.transpose(1, 2)[..., None]
    return _out(layer, heads * g)


def local(layer: Any, x: Tensor, context: Tensor) -> Tensor:
    q, k, v = _qkv(layer, x, context)
    allowed = oracle.window(layer.window, layer.lookahead).allowed(
        q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return _out(layer, oracle.attention(q, k, v, allowed=allowed)[0])


def ssmax(layer: Any, x: Tensor, context: Tensor) -> Tensor:
    """softmax(s_h log(n) z) with n = S keys (all of them may be attended)."""
    q, k, v = _qkv(layer, x, context)
    s = layer.s.detach().double().view(1, -1, 1, 1)
    weights = torch.softmax(s * math.log(k.shape[2]) * _scores(q, k), -1)
    return _out(layer, weights @ v)


def topk(layer: Any, x: Tensor, context: Tensor) -> Tensor:
    """Per query, softmax over its top-k scores only."""
    q, k, v = _qkv(layer, x, context)
    p = _scores(q, k)
    kth = p.sort(-1, descending=True).values[..., min(layer.top_k, p.shape[-1]) - 1:][..., :1]
    weights = torch.softmax(p.masked_fill(p < kth, float("-inf")), -1)
    return _out(layer, weights @ v)


def adaptive_span(layer: Any, x: Tensor, context: Tensor) -> Tensor:
    """Softmax weights times the soft span ramp m_z(|i + S - L - j|), renormalized."""
    q, k, v = _qkv(layer, x, context)
    lq, lk = q.shape[2], k.shape[2]
    i, j = torch.arange(lq, dtype=torch.float64), torch.arange(lk, dtype=torch.float64)
    distance = (i[:, None] + (lk - lq) - j[None, :]).abs()
    z = layer.span_fraction.detach().double().clamp(0, 1) * layer.max_span
    ramp = ((layer.ramp + z[:, None, None] - distance) / layer.ramp).clamp(0, 1)
    ramp = ramp * (distance < layer.max_span)
    weights = torch.softmax(_scores(q, k), -1) * ramp
    return _out(layer, (weights / weights.sum(-1, keepdim=True)) @ v)


def linear(layer: Any, x: Tensor, context: Tensor) -> Tensor:
    """phi(q) phi(k)^T v normalized, phi = elu + 1 (Katharopoulos et al., 2020)."""
    q, k, v = _qkv(layer, x, context)
    sim = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)
    return _out(layer, (sim @ v) / sim.sum(-1, keepdim=True))


def performer(layer: Any, x: Tensor, context: Tensor) -> Tensor:
    q, k, v = _qkv(layer, x, context)
    return _out(layer, favor(q, k, v, layer.projection.double()))


def linformer(layer: Any, x: Tensor, context: Tensor) -> Tensor:
    """Keys and values projected along their length by E, F (first S columns), then softmax."""
    q, k, v = _qkv(layer, x, context)
    lk = k.shape[2]
    e = layer.key_length_proj.detach().double()[:, :lk]
    f = e if layer.value_length_proj is None else \
        layer.value_length_proj.detach().double()[:, :lk]
    return _out(layer, oracle.attention(q, e @ k, f @ v)[0])


def nystrom(layer: Any, x: Tensor, context: Tensor) -> Tensor:
    """F pinv(A) B V with landmarks from segment means of q and of k (no convolution)."""
    assert layer.conv is None, "the depthwise convolution mixes values along the query axis"
    q, k, v = _qkv(layer, x, context)
    m = layer.num_landmarks
    q_l, k_l = landmarks(q, m), landmarks(k, m)
    f = torch.softmax(_scores(q, k_l), -1)
    a = torch.softmax(_scores(q_l, k_l), -1)
    b = torch.softmax(_scores(q_l, k), -1)
    return _out(layer, f @ pinv_paper(a, layer.pinv_iterations) @ (b @ v))


def differential(layer: Any, x: Tensor, context: Tensor) -> Tensor:
    # the layout counts half-heads: each differential head holds two softmax maps
    return differential_reference(layer, x, layer.layout.num_heads // 2,
                                  layer.layout.num_kv_heads // 2, False, context)


CROSS_REFERENCES: dict[str, Callable[[Any, Tensor, Tensor], Tensor]] = {
    "mha": mha, "gated": gated, "local": local, "ssmax": ssmax, "topk": topk,
    "adaptive_span": adaptive_span, "linear": linear, "performer": performer,
    "linformer": linformer, "nystrom": nystrom, "differential": differential,
}
