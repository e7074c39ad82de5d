"""Learning rate: linear warmup, then cosine decay (Loshchilov & Hutter, 2017) to a floor.

A pure function of the step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math

__all__ = ["warmup_cosine"]


def warmup_cosine(step: int, *, total_steps: int, peak_lr: float, warmup_steps: int,
                  min_lr_ratio: float = 0.0) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    ``lr = peak * (step + 1) / warmup`` during warmup, then
    ``lr = peak * (floor + (1 - floor) * (1 + cos(pi * t)) / 2)`` with ``t`` going 0 -> 1.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = min((step - warmup_steps) / span, 1.0)
    return peak_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
