"""Attention layers: every kind behind one interface and one registry."""

from attnkit.layers.base import AttentionLayer, AttentionProbe, collect_auxiliary_losses
from attnkit.layers.kv_cache import KVCache, RollingKVCache, StaticKVCache
from attnkit.layers.multihead import MultiHeadAttention
from attnkit.layers.registry import build_attention, list_attention_kinds, register_attention

register_attention("mha", "standard multi-head softmax attention with GQA/MQA, RoPE, ALiBi "
                   "(Vaswani et al., 2017)")(MultiHeadAttention)

__all__ = ["AttentionLayer", "AttentionProbe", "KVCache", "MultiHeadAttention", "RollingKVCache",
           "StaticKVCache", "build_attention", "collect_auxiliary_losses",
           "list_attention_kinds", "register_attention"]
