"""The optimizer: AdamW with weight decay chosen by module type, not by parameter name.

Only the weight matrices of linear and convolution layers decay. Embedding tables (token,
learned positions), normalization scales and shifts, biases, class tokens and per-head scalars
do not: decaying them pulls rare tokens and norm gains towards zero without regularizing
anything (the GPT-2 / minGPT rule). A weight shared by an embedding and a linear head (tied
embeddings) counts as an embedding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from attnkit.train.config import RunConfig

__all__ = ["build_optimizer", "weight_decay_groups"]

_DECAYED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_decay_groups(model: nn.Module) -> tuple[list[str], list[str]]:
    """``(decayed, not_decayed)`` parameter names of ``model`` (each trainable one once)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decayed_ids = {id(m.weight) for m in model.modules()
                   if isinstance(m, _DECAYED_MODULES) and id(m.weight) not in embeddings}
    decayed: list[str] = []
    kept: list[str] = []
    for name, param in model.named_parameters():  # shared parameters are listed once
        if param.requires_grad:
            (decayed if id(param) in decayed_ids else kept).append(name)
    return decayed, kept


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.AdamW:
    """AdamW over two groups: decayed matrices and everything else (see the module docstring)."""
    decayed, kept = weight_decay_groups(model)
    params = dict(model.named_parameters())
    t = config.train
    return torch.optim.AdamW(
        [{"params": [params[n] for n in decayed], "weight_decay": t.weight_decay},
         {"params": [params[n] for n in kept], "weight_decay": 0.0}],
        lr=t.lr, betas=(t.betas[0], t.betas[1]))
