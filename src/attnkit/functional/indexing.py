"""Index grids over (batch, head, query, key): the one place that builds them.

Masks and biases are rules on broadcastable index tensors (FlexAttention's ``mask_mod`` /
``score_mod`` form); every dense view, tile and chunk of one is evaluated on such a grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["index_grid"]


def index_grid(q_idx: Tensor, k_idx: Tensor, batch: int, heads: int
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Broadcastable (b, h, q, k) index tensors for query positions ``q_idx`` (tq,) and key
    positions ``k_idx`` (tk,): shapes (batch, 1, 1, 1), (1, heads, 1, 1), (1, 1, tq, 1),
    (1, 1, 1, tk), on ``q_idx``'s device."""
    dev = q_idx.device
    return (torch.arange(batch, device=dev).view(-1, 1, 1, 1),
            torch.arange(heads, device=dev).view(1, -1, 1, 1),
            q_idx.view(1, 1, -1, 1), k_idx.view(1, 1, 1, -1))
