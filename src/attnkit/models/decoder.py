"""Decoder-only language model (GPT-style) with cached generation and streaming.

Shape legend: B batch, L tokens, D model width, V vocabulary.

    h = dropout(embed(tokens) + positions)        # (B, L, D)
    h = stack(h, mask=causal)                     # (B, L, D)
    logits = h @ E^T                              # (B, L, V), E tied to the embedding
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.functional import masks
from attnkit.functional.masks import Mask
from attnkit.layers.kv_cache import KVCache, RollingKVCache, StaticKVCache
from attnkit.layers.multihead import MultiHeadAttention
from attnkit.models.blocks import TransformerBlock, TransformerStack
from attnkit.models.builders import build_stack
from attnkit.models.config import ModelConfig
from attnkit.models.embeddings import LearnedPositions, TokenEmbedding, build_positions
from attnkit.models.generation import SamplingConfig, sample_next
from attnkit.models.prompts import PromptBatch, stop_token_ids
from attnkit.models.weight_layout import set_weight_layout

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
    """Causal language model: next-token logits for every position.

    ``max_length`` is the context the model was built (and trained) for: learned positions end
    there, and :meth:`generate` refuses to go past it except with ``cache="rolling"``.

    ``weight_layout``: memory layout of every projection weight, the output projection (and the
    embedding table tied to it) included; see :mod:`attnkit.models.weight_layout`.
    ``"output_major"`` (default) is PyTorch's layout, the one training runs fastest in;
    ``"input_major"`` makes the matrix-vector products of a decode step faster on CPU. Values,
    results and checkpoints are the same in both; ``set_weight_layout(model, "input_major")``
    switches a built or trained model in place before generating.
    """

    def __init__(self, *, embedding: TokenEmbedding, positions: nn.Module,
                 stack: TransformerStack, dim: int, vocab_size: int, tie_embeddings: bool = True,
                 dropout: float = 0.0, max_length: int | None = None,
                 weight_layout: str = "output_major") -> None:
        super().__init__()
        self.embedding, self.positions, self.stack = embedding, positions, stack
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embedding.table.weight  # Press & Wolf (2017)
        self.vocab_size = vocab_size
        self.max_length = max_length
        set_weight_layout(self, weight_layout)

    def forward(self, tokens: Tensor, lengths: Tensor | None = None, *, mask: Mask | None = None,
                caches: list[Any] | None = None) -> Tensor:
        """tokens: (B, L) -> logits (B, L, V). ``mask`` replaces the causal default.

        Right padding needs no mask: under the causal mask real tokens never see later pads.
        """
        return self.head(self.features(tokens, mask=mask, caches=caches))

    def features(self, tokens: Tensor, *, mask: Mask | None = None,
                 caches: list[Any] | None = None) -> Tensor:
        """The final hidden states (B, L, D), before the output projection."""
        offset: int | Tensor = 0
        if caches:
            # (L,) positions, or (B, L) for a left-padded batch
            positions = caches[0].query_positions(tokens.shape[1], tokens.device)
            offset = caches[0].position if positions.dim() == 1 else positions
        if mask is None:
            # One new query after the cached keys sees all of them: causal adds nothing, and
            # without a mask the engine takes its fastest path. (Pad and window masks come
            # from the caches themselves.)
            mask = None if caches and tokens.shape[1] == 1 else masks.causal()
        h = self.dropout(self.positions(self.embedding(tokens), offset))  # (B, L, D)
        return self.stack(h, mask=mask, caches=caches)

    def generate(self, prompt: Tensor, *, max_new_tokens: int,
                 lengths: Tensor | list[int] | None = None, attention_mask: Tensor | None = None,
                 sampling: SamplingConfig | None = None, cache: str = "static",
                 window: int | None = None, sink: int = 4,
                 eos_id: int | Collection[int] | None = None, pad_id: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Continue each prompt by up to ``max_new_tokens`` tokens.

        On CPU, call ``attnkit.models.set_weight_layout(model, "input_major")`` once before
        generating: a decode step reads every weight once, and that layout reads them faster
        (GPT-2 small: about 7 ms less per token). attnkit's generate commands do.

        Args:
            prompt: (B, L) token ids. Prompts of different lengths: right-padded with
                ``lengths`` (B,), or padded on either side with ``attention_mask`` (B, L)
                (1 = real token). Greedy decoding gives every prompt exactly the tokens it
                gets alone; the batch runs left-padded with one KV cache.
            cache: ``static`` (KV cache, exact; prompt + new tokens must fit ``max_length``),
                ``rolling`` (streaming past ``max_length`` with constant memory: attention sees
                the ``sink`` first and ``window`` latest tokens, window default
                ``max_length - sink``; past ``max_length`` only with RoPE, ALiBi or no
                positions: learned tables end there), ``none`` (re-run the
                whole sequence each step; works for every attention kind).
            eos_id: a stop token or a set of them. A row that produced one is finished: its
                later tokens are ``pad_id``; generation ends when every row is finished.
            pad_id: filler after a finished row and after shorter prompts (default: ``eos_id``
                when it is a single id, else 0).

        Returns:
            (B, max(lengths) + N) ids, N <= ``max_new_tokens``: row b is its prompt, its new
            tokens, then ``pad_id``. Without padding this is ``cat(prompt, new)``.
        """
        batch = PromptBatch.build(prompt, lengths=lengths, attention_mask=attention_mask)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        stop = stop_token_ids(eos_id, prompt.device)
        if pad_id is None:
            pad_id = eos_id if isinstance(eos_id, int) else 0
        window = self._check_length(batch, max_new_tokens, cache, window, sink)
        sampling = sampling or SamplingConfig()
        was_training = self.training
        self.eval()
        try:
            # inference_mode skips autograd bookkeeping; the result is cloned outside it so
            # callers may use the tokens in training code (inference tensors cannot be).
            with torch.inference_mode():
                if batch.uneven and not (cache == "static" and self._pads_supported()):
                    # Kinds without padded caches, and rolling caches (whose sinks must be
                    # each row's own first tokens), decode one prompt at a time.
                    rows = [self._decode(batch.row(b), None, max_new_tokens, sampling, cache,
                                         window, sink, stop, pad_id, generator)
                            for b in range(prompt.shape[0])]
                    width = max(r.shape[1] for r in rows)
                    new = torch.cat([F.pad(r, (0, width - r.shape[1]), value=pad_id)
                                     for r in rows])
                else:
                    new = self._decode(batch.tokens, batch.pads if batch.uneven else None,
                                       max_new_tokens, sampling, cache, window, sink, stop,
                                       pad_id, generator)
                out = batch.assemble(new, pad_id)
            return out.clone()
        finally:
            self.train(was_training)

    def _decode(self, tokens: Tensor, pads: Tensor | None, max_new_tokens: int,
                sampling: SamplingConfig, cache: str, window: int | None, sink: int,
                stop: Tensor | None, pad_id: int, generator: torch.Generator | None) -> Tensor:
        """New tokens (B, N) for left-padded ``tokens`` (B, L) with ``pads`` (B,) pad slots."""
        batch = tokens.shape[0]
        new = tokens.new_full((batch, max_new_tokens), pad_id)
        if max_new_tokens == 0:
            return new
        done = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
        caches: list[Any] | None = None
        if cache != "none":
            caches = new_caches(self.stack, cache=cache,
                                max_length=tokens.shape[1] + max_new_tokens, window=window,
                                sink=sink)
            for c in caches:
                if isinstance(c, StaticKVCache):  # pads is None unless the batch is uneven
                    c.pads = pads
        # Prefill: the output projection only for the last position, the one that is sampled.
        hidden = self.features(tokens, caches=caches)[:, -1]  # (B, D)
        for step in range(max_new_tokens):
            token = sample_next(self.head(hidden), sampling, generator)  # (B,)
            if stop is None:
                new[:, step] = token
            else:
                # A finished row records pad_id but keeps feeding its sampled token: pad_id
                # need not be a valid input id, and that row's outputs are never used.
                new[:, step] = token.masked_fill(done, pad_id)
                done = done | torch.isin(token, stop)
            if step == max_new_tokens - 1 or (stop is not None and bool(done.all())):
                return new[:, :step + 1]
            if caches is None:
                tokens = torch.cat([tokens, token[:, None]], dim=1)
                hidden = self.features(tokens)[:, -1]
            else:
                hidden = self.features(token[:, None], caches=caches)[:, -1]
        return new

    def _pads_supported(self) -> bool:
        """Whether every layer takes a left-padded batch through a StaticKVCache's pads."""
        return all(isinstance(getattr(block, "attention", None), MultiHeadAttention)
                   for block in self.stack.blocks)

    def _check_length(self, batch: PromptBatch, max_new_tokens: int, cache: str,
                      window: int | None, sink: int) -> int | None:
        """Refuse what exceeds the model's context with the numbers and the fix; returns the
        rolling window (its default filled in)."""
        longest = int(batch.lengths.max())
        total = longest + max_new_tokens
        learned = isinstance(self.positions, LearnedPositions)
        context = self.max_length
        if context is None and isinstance(self.positions, LearnedPositions):
            context = int(self.positions.table.shape[0])  # built without max_length (hf.load)
        if cache == "rolling":
            if learned and context is not None and total > context:
                raise ValueError(
                    f"the longest prompt has {longest} tokens and max_new_tokens is "
                    f"{max_new_tokens}: {total} positions, but this model has "
                    f"{context} learned positions and none beyond, so cache='rolling' "
                    f"cannot stream past them; lower max_new_tokens to "
                    f"{max(0, context - longest)}, or build the model with "
                    f"positional='rope' (or 'none' with ALiBi) to stream")
            if window is None:
                if context is None:
                    raise ValueError("cache='rolling' needs a window (how many recent tokens "
                                     "to keep); this model sets no max_length to default it")
                window = max(1, context - sink)
            return window
        if context is not None and total > context:
            fix = (f"lower max_new_tokens to {context - longest}" if longest
                   < context else f"shorten the prompt below {context} tokens")
            if not learned:
                fix += (", or use cache='rolling' to stream past the context with constant "
                        "memory")
            raise ValueError(f"the longest prompt has {longest} tokens and max_new_tokens is "
                             f"{max_new_tokens}: {total} positions, beyond the model's "
                             f"max_length {context}; {fix}")
        return window


def build_decoder_lm(config: ModelConfig, *, vocab_size: int) -> DecoderLM:
    """GPT-style LM from ``config`` (pre-norm by default, tied embeddings)."""
    return DecoderLM(
        embedding=TokenEmbedding(vocab_size=vocab_size, dim=config.d_model),
        positions=build_positions(config.positional, max_length=config.max_length,
                                  dim=config.d_model),
        stack=build_stack(config, num_layers=config.num_layers),
        dim=config.d_model, vocab_size=vocab_size, tie_embeddings=config.tie_embeddings,
        dropout=config.dropout, max_length=config.max_length)
