"""Component builders: wire attention, MLP and norms into blocks and stacks from a ModelConfig.

Attention layers come from :func:`attnkit.layers.build_attention` by kind name, one kind per
layer, so any registered kind plugs into any family.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from attnkit.layers import build_attention
from attnkit.layers import registry as attention_registry
from attnkit.layers.base import AttentionLayer
from attnkit.models.blocks import TransformerBlock, TransformerStack
from attnkit.models.config import ModelConfig
from attnkit.models.mlp import build_mlp
from attnkit.models.norms import build_norm

__all__ = ["attention_options", "build_block", "build_stack"]


def attention_options(config: ModelConfig, *, self_attention: bool = True) -> dict[str, Any]:
    """Keyword options passed to ``build_attention`` besides dim and num_heads."""
    options: dict[str, Any] = {}
    if config.attention_dropout > 0:
        options["dropout"] = config.attention_dropout
    if config.positional == "rope" and self_attention:
        options["rope"] = True
    options.update(config.attention_options)
    return options


def _wants_max_length(kind: str) -> bool:
    """Whether kind's constructor takes ``max_length`` (e.g. Linformer's fixed projection)."""
    entry = attention_registry.get_attention_kind(kind)
    if entry is None:
        return False
    try:
        return "max_length" in inspect.signature(entry.factory).parameters
    except (TypeError, ValueError):
        return False


def _attention(kind: str, config: ModelConfig, *, self_attention: bool,
               max_length: int | None = None) -> AttentionLayer:
    options = attention_options(config, self_attention=self_attention)
    if max_length is not None and "max_length" not in options and _wants_max_length(kind):
        options["max_length"] = max_length  # the longest sequence this stack will see
    return build_attention(kind, dim=config.d_model, num_heads=config.num_heads, **options)


def build_block(config: ModelConfig, *, kind: str, cross: bool = False,
                max_length: int | None = None) -> TransformerBlock:
    """One residual block with attention ``kind`` (and cross-attention if ``cross``).

    ``max_length``: the longest sequence the block sees, for kinds whose parameters depend on it.
    """
    d = config.d_model

    def norm() -> nn.Module:
        return build_norm(config.norm, d, bias=config.bias, eps=config.norm_eps)

    return TransformerBlock(
        attention=_attention(kind, config, self_attention=True, max_length=max_length),
        mlp=build_mlp(config.mlp, dim=d, hidden=config.d_ff,
                      dropout=config.dropout if config.mlp_dropout is None else config.mlp_dropout,
                      bias=config.bias),
        attention_norm=norm(), mlp_norm=norm(),
        dropout=config.dropout, norm_first=config.norm_first,
        cross_attention=(_attention(config.cross_attention, config, self_attention=False,
                                    max_length=max_length) if cross else None),
        cross_norm=norm() if cross else None)


def build_stack(config: ModelConfig, *, num_layers: int, cross: bool = False,
                max_length: int | None = None) -> TransformerStack:
    """``num_layers`` blocks (attention kinds from ``config.attention``) and the final norm.

    ``max_length`` defaults to ``config.max_length``."""
    if num_layers < 1:
        raise ValueError(f"a stack needs at least one layer, got num_layers={num_layers}")
    if config.d_model % config.num_heads:
        raise ValueError(f"d_model={config.d_model} is not divisible by num_heads="
                         f"{config.num_heads}; pick a divisor")
    length = config.max_length if max_length is None else max_length
    blocks = [build_block(config, kind=kind, cross=cross, max_length=length)
              for kind in config.attention_kinds(num_layers)]
    final = (build_norm(config.norm, config.d_model, bias=config.bias, eps=config.norm_eps)
             if config.norm_first else nn.Identity())
    return TransformerStack(blocks=blocks, final_norm=final)
