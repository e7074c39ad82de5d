"""Local (sliding-window) attention: each query sees only keys within a fixed distance.

As in Longformer's local attention (Beltagy et al., 2020) and Mistral's sliding window:

    out_i = softmax_{j : -window <= j - i <= lookahead}(q_i k_j^T / sqrt(Dh)) v_j

It is :class:`MultiHeadAttention` with ``masks.sliding_window(window, lookahead)`` joined to the
caller's mask; the engine's blocked backend skips the empty tiles, so compute and memory grow
linearly in L (about ``L * (window + lookahead)`` scores). ``mask=masks.causal()`` makes it causal;
with a KV cache (e.g. ``RollingKVCache(window + 1)``) it decodes token by token.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from attnkit.functional import masks
from attnkit.functional.masks import Mask
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["LocalAttention"]


class LocalAttention(MultiHeadAttention):
    """Sliding-window attention over the exact engine.

    Options (besides every :class:`MultiHeadAttention` option, same defaults):
        window: keys to the left each query sees (default 256).
        lookahead: keys to the right (default ``window``; a causal mask removes them anyway).
    """

    def __init__(self, dim: int, num_heads: int, *, window: int = 256,
                 lookahead: int | None = None, **mha_options: Any) -> None:
        super().__init__(dim, num_heads, **mha_options)
        lookahead = window if lookahead is None else lookahead
        if window < 0 or lookahead < 0:
            raise ValueError(f"window and lookahead must be >= 0, got window={window}, "
                             f"lookahead={lookahead}")
        self.window, self.lookahead = window, lookahead

    def window_mask(self) -> Mask:
        return masks.sliding_window(self.window, self.lookahead)

    def attend_heads(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                     cache: Any = None) -> Tensor:
        local = self.window_mask()
        return super().attend_heads(x, context, mask=local if mask is None else mask & local,
                                    cache=cache)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}, lookahead={self.lookahead}"
