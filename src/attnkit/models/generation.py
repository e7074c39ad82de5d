"""Sampling the next token: greedy, temperature, top-k (Fan et al., 2018), top-p / nucleus
(Holtzman et al., 2020).

Shape legend: B batch, V vocabulary, ``...`` any leading dims (filtering works on every row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SamplingConfig", "filter_logits", "sample_next"]


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each next token."""

    temperature: float = 0.0  # 0 = greedy (argmax); > 0 divides the logits before sampling
    top_k: int | None = None  # keep only the k most likely tokens
    top_p: float | None = None  # keep the smallest set of tokens whose probability reaches p
    suppress_ids: tuple[int, ...] = ()  # never generate these ids (padding, begin-of-sequence)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: Tensor, *, top_k: int | None = None, top_p: float | None = None
                  ) -> Tensor:
    """Set logits outside the top-k / nucleus to -inf. logits: (..., V) -> (..., V).

    A top_k of V or more keeps every token; so does top_p = 1."""
    if top_k is not None:
        # topk and sort work along the last dim (the vocabulary) by default
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach top_p (the first always stays).
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -torch.inf)
    return logits


def sample_next(logits: Tensor, config: SamplingConfig, generator: torch.Generator | None = None
                ) -> Tensor:
    """Next token ids (B,) from the last-position logits (B, V); one id (a 0-D tensor) from the
    logits (V,) of one sequence."""
    if config.suppress_ids:
        logits = logits.clone()
        logits[..., list(config.suppress_ids)] = -torch.inf
    if config.temperature == 0:
        return logits.argmax(-1)
    filtered = filter_logits(logits.float() / config.temperature, top_k=config.top_k,
                             top_p=config.top_p)
    probs = torch.softmax(filtered, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
