"""Multi-head attention (Vaswani et al., 2017) with GQA / MQA, RoPE, ALiBi, QK-norm, KV cache.

Shape legend: B batch, L query length, S key length (= L for self-attention), H query heads,
Hkv key/value heads, Dh head dim.

    q = x W_q, k = c W_k, v = c W_v              # c = x (self) or context (cross)
    out = W_o · concat_h attention(q_h, k_g(h), v_g(h))   # g(h) = h // (H / Hkv)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.engine import attention
from attnkit.functional import bias as biases
from attnkit.functional.bias import Bias, alibi, alibi_slopes
from attnkit.functional.masks import Mask
from attnkit.functional.math import attention_weights, validate
from attnkit.functional.positional import RotaryEmbedding
from attnkit.layers.base import AttentionLayer, check_input, merge_heads, split_heads
from attnkit.layers.kv_cache import KVCache, RollingKVCache

__all__ = ["HeadLayout", "MultiHeadAttention"]


@dataclass(frozen=True)
class HeadLayout:
    """How ``dim`` is split into heads; validated once, shared by the attention kinds."""

    dim: int  # model width
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (GQA: divides num_heads; MQA: 1)
    head_dim: int  # width of one head

    @classmethod
    def build(cls, dim: int, num_heads: int, num_kv_heads: int | None = None,
              head_dim: int | None = None) -> HeadLayout:
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        kv = num_heads if num_kv_heads is None else num_kv_heads
        if kv < 1 or num_heads % kv:
            raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={kv} (GQA)")
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}; pass "
                                 f"head_dim explicitly or pick a divisor")
            head_dim = dim // num_heads
        return cls(dim, num_heads, kv, head_dim)


class MultiHeadAttention(AttentionLayer):
    """Standard softmax attention over the :func:`attnkit.attention` engine.

    Args:
        dim: model width of ``x``.
        num_heads: query heads.
        num_kv_heads: key/value heads (default ``num_heads``; 1 = MQA).
        head_dim: per-head width (default ``dim // num_heads``).
        context_dim: width of ``context`` for cross-attention (default ``dim``).
        bias: whether projections have biases.
        dropout: dropout on the attention weights while training.
        qk_norm: RMS-normalize queries and keys per head (Dehghani et al., 2023).
        rope: rotary embeddings for self-attention: ``True`` (half-split) or a RotaryEmbedding.
        alibi: add ALiBi biases (Press et al., 2022).
        softcap: tanh logit capping (Gemma 2).
        backend: engine backend ("auto" or a name).
    """

    supports_cache = True

    def __init__(self, dim: int, num_heads: int, *, num_kv_heads: int | None = None,
                 head_dim: int | None = None, context_dim: int | None = None, bias: bool = True,
                 dropout: float = 0.0, qk_norm: bool = False,
                 rope: bool | RotaryEmbedding | None = None, alibi: bool = False,
                 softcap: float | None = None, backend: str = "auto") -> None:
        super().__init__()
        self.layout = HeadLayout.build(dim, num_heads, num_kv_heads, head_dim)
        lay = self.layout
        context_dim = dim if context_dim is None else context_dim
        self.q_proj = nn.Linear(dim, lay.num_heads * lay.head_dim, bias=bias)
        self.k_proj = nn.Linear(context_dim, lay.num_kv_heads * lay.head_dim, bias=bias)
        self.v_proj = nn.Linear(context_dim, lay.num_kv_heads * lay.head_dim, bias=bias)
        self.out_proj = nn.Linear(lay.num_heads * lay.head_dim, dim, bias=bias)
        self.q_norm = nn.RMSNorm(lay.head_dim) if qk_norm else None
        self.k_norm = nn.RMSNorm(lay.head_dim) if qk_norm else None
        if rope is True:
            rope = RotaryEmbedding(lay.head_dim)
        self.rope = rope or None
        self.use_alibi = alibi
        self.softcap = softcap
        self.dropout = dropout
        self.backend = backend

    def project(self, x: Tensor, context: Tensor | None, cache: KVCache | None
                ) -> tuple[Tensor, Tensor, Tensor, Mask | None]:
        """Queries (B, H, L, Dh), keys and values (B, Hkv, S, Dh), and the cache's extra mask."""
        lay = self.layout
        source = x if context is None else context
        if context is None and torch.is_grad_enabled() and self._fusable():
            # Self-attention under autograd: one matmul for q, k and v (as GPT-2's c_attn) is
            # faster than three, and its backward needs no sum of three input gradients. Same
            # parameters, same math. Without autograd (evaluation, generation) the weights'
            # concatenation would be rebuilt on every call: copying 3 D^2 weights per layer and
            # token took 47% of a GPT-2-small generation's CPU time in a profile (2 threads),
            # while at decode time three matrix-vector products read the same bytes as one.
            weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
            bias = None if self.q_proj.bias is None else torch.cat(
                [self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])  # type: ignore[list-item]
            q_flat, k_flat, v_flat = F.linear(x, weight, bias).split(
                [self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features], -1)
        else:
            q_flat, k_flat, v_flat = self.q_proj(x), self.k_proj(source), self.v_proj(source)
        q = split_heads(q_flat, lay.num_heads)
        k = split_heads(k_flat, lay.num_kv_heads)
        v = split_heads(v_flat, lay.num_kv_heads)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and context is None:
            # (L,), or (B, L) for a left-padded batch whose rows start at different slots
            positions = (torch.arange(q.shape[2], device=q.device) if cache is None
                         else cache.query_positions(q.shape[2], q.device))
            q, k = self.rope(q, positions), self.rope(k, positions)
        extra: Mask | None = None
        if cache is not None:
            k, v, extra = cache.update(k, v)
        return q, k, v, extra

    def _fusable(self) -> bool:
        """Whether q/k/v are plain Linears over the same input that one matmul can compute."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        return (all(type(p) is nn.Linear for p in projections)
                and len({p.bias is None for p in projections}) == 1
                and self.q_proj.in_features == self.k_proj.in_features)

    def score_bias(self) -> Bias | None:
        return alibi(self.layout.num_heads) if self.use_alibi else None

    def cached_score_bias(self, cache: Any, num_queries: int) -> Bias | None:
        """:meth:`score_bias` for attention over ``cache`` after its update (None: no cache).

        A rolling cache evicts keys, so the slot index no longer gives a key's distance to the
        query; ALiBi then comes from the keys' kept absolute positions. Plain math::

            bias[h, i, j] = -slope[h] * |query_position[i] - key_position[j]|
        """
        if not (self.use_alibi and isinstance(cache, RollingKVCache)):
            return self.score_bias()
        keys = cache.attended_positions  # (S,)
        queries = torch.arange(cache.position - num_queries, cache.position)  # (L,)
        distance = (queries[:, None] - keys[None, :]).abs()  # (L, S) integers
        slopes = alibi_slopes(self.layout.num_heads)[:, None, None]  # (H, 1, 1) float64
        return biases.dense(-slopes * distance)  # (H, L, S), float64 as alibi() computes it

    def forward(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                cache: Any = None) -> Tensor:
        out = self.attend_heads(x, context, mask=mask, cache=cache)  # (B, H, L, Dh)
        return self.out_proj(merge_heads(out))

    def scale_queries(self, q: Tensor, k: Tensor, mask: Mask | None) -> Tensor:
        """Hook for variants that rescale logits per head / query (e.g. ssmax); identity here."""
        return q

    def attend_heads(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                     cache: Any = None) -> Tensor:
        """Per-head attention output (B, H, L, Dh), routed through the probe, before out_proj.

        Variants (gated, ssmax, local) reuse projections and the engine call through this."""
        q, k, v, mask = self.prepare(x, context, mask=mask, cache=cache)
        bias = self.cached_score_bias(cache, q.shape[2])
        dropout_p = self.dropout if self.training else 0.0
        out = attention(q, k, v, mask=mask, bias=bias, softcap=self.softcap,
                        dropout_p=dropout_p, backend=self.backend)  # (B, H, L, Dh)

        def weights() -> Tensor:
            spec = validate(q, k, v, mask=mask, bias=bias, scale=None, softcap=self.softcap,
                            dropout_p=0.0)
            return attention_weights(spec)

        return self.probe(out, v, weights)

    def prepare(self, x: Tensor, context: Tensor | None, *, mask: Mask | None, cache: Any
                ) -> tuple[Tensor, Tensor, Tensor, Mask | None]:
        """Checked inputs -> queries, keys, values (cache applied) and the full mask."""
        check_input(x, self.layout.dim)
        if cache is not None and context is not None:
            raise ValueError("a KV cache is for self-attention; cross-attention keys come from "
                             "the fixed context, so call without cache")
        q, k, v, extra = self.project(x, context, cache)
        if extra is not None:
            mask = extra if mask is None else mask & extra
        return self.scale_queries(q, k, mask), k, v, mask

    def extra_repr(self) -> str:
        lay = self.layout
        return (f"dim={lay.dim}, heads={lay.num_heads}, kv_heads={lay.num_kv_heads}, "
                f"head_dim={lay.head_dim}, alibi={self.use_alibi}, softcap={self.softcap}, "
                f"backend={self.backend!r}")
