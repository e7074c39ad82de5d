"""Decoder-only language model (GPT-style) with cached generation and streaming.

Shape legend: B batch, L tokens, D model width, V vocabulary.

    h = dropout(embed(tokens) + positions)        # (B, L, D)
    h = stack(h, mask=causal)                     # (B, L, D)
    logits = h @ E^T                              # (B, L, V), E tied to the embedding
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnkit.functional import masks
from attnkit.functional.masks import Mask
from attnkit.layers.kv_cache import KVCache, RollingKVCache, StaticKVCache
from attnkit.models.blocks import TransformerBlock, TransformerStack
from attnkit.models.builders import build_stack
from attnkit.models.config import ModelConfig
from attnkit.models.embeddings import TokenEmbedding, build_positions
from attnkit.models.generation import SamplingConfig, sample_next

__all__ = ["DecoderLM", "build_decoder_lm", "new_caches"]


def new_caches(stack: TransformerStack, *, cache: str, max_length: int, window: int | None = None,
               sink: int = 4) -> list[KVCache]:
    """One KV cache per block: ``static`` (exact, ``max_length`` slots) or ``rolling``
    (StreamingLLM: ``sink`` first tokens + the ``window`` latest)."""
    for i, block in enumerate(stack.blocks):
        attention = block.attention if isinstance(block, TransformerBlock) else None
        if attention is None or not getattr(attention, "supports_cache", False):
            raise ValueError(f"layer {i} attention {type(attention).__name__} has no KV "
                             f"cache; generate with cache='none'")
    if cache == "static":
        return [StaticKVCache(max_length) for _ in stack.blocks]
    if cache == "rolling":
        if window is None:
            raise ValueError("cache='rolling' needs a window (how many recent tokens to keep)")
        return [RollingKVCache(window, sink) for _ in stack.blocks]
    raise ValueError(f"unknown cache {cache!r}; choose static, rolling or none")


class DecoderLM(nn.Module):
    """Causal language model: next-token logits for every position."""

    def __init__(self, *, embedding: TokenEmbedding, positions: nn.Module,
                 stack: TransformerStack, dim: int, vocab_size: int, tie_embeddings: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding, self.positions, self.stack = embedding, positions, stack
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embedding.table.weight  # Press & Wolf (2017)
        self.vocab_size = vocab_size

    def forward(self, tokens: Tensor, lengths: Tensor | None = None, *, mask: Mask | None = None,
                caches: list[Any] | None = None) -> Tensor:
        """tokens: (B, L) -> logits (B, L, V). ``mask`` replaces the causal default.

        Right padding needs no mask: under the causal mask real tokens never see later pads.
        """
        offset = caches[0].position if caches else 0
        h = self.dropout(self.positions(self.embedding(tokens), offset))  # (B, L, D)
        h = self.stack(h, mask=masks.causal() if mask is None else mask, caches=caches)
        return self.head(h)

    @torch.no_grad()
    def generate(self, prompt: Tensor, *, max_new_tokens: int,
                 sampling: SamplingConfig | None = None, cache: str = "static",
                 window: int | None = None, sink: int = 4, eos_id: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Continue ``prompt`` (B, L) by ``max_new_tokens`` tokens -> (B, L + new).

        ``cache``: ``static`` (KV cache, exact), ``rolling`` (streaming, constant memory:
        attention sees the ``sink`` first and ``window`` latest tokens), ``none`` (re-run the
        whole sequence each step; works for every attention kind). Generation stops early once
        every sequence has produced ``eos_id``.
        """
        if prompt.dim() != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt must be (batch, length>=1) token ids, got "
                             f"{tuple(prompt.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        sampling = sampling or SamplingConfig()
        was_training = self.training
        self.eval()
        try:
            out = prompt
            done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
            caches = None if cache == "none" else new_caches(
                self.stack, cache=cache, max_length=prompt.shape[1] + max_new_tokens,
                window=window, sink=sink)
            step_input = prompt
            for _ in range(max_new_tokens):
                logits = self(step_input if caches is not None else out, caches=caches)
                token = sample_next(logits[:, -1], sampling, generator)  # (B,)
                if eos_id is not None:
                    token = token.masked_fill(done, eos_id)
                    done = done | (token == eos_id)
                out = torch.cat([out, token[:, None]], dim=1)
                step_input = token[:, None]
                if eos_id is not None and bool(done.all()):
                    break
            return out
        finally:
            self.train(was_training)


def build_decoder_lm(config: ModelConfig, *, vocab_size: int) -> DecoderLM:
    """GPT-style LM from ``config`` (pre-norm by default, tied embeddings)."""
    return DecoderLM(
        embedding=TokenEmbedding(vocab_size=vocab_size, dim=config.d_model),
        positions=build_positions(config.positional, max_length=config.max_length,
                                  dim=config.d_model),
        stack=build_stack(config, num_layers=config.num_layers),
        dim=config.d_model, vocab_size=vocab_size, tie_embeddings=config.tie_embeddings,
        dropout=config.dropout)
