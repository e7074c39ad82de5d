"""Encoder-decoder Transformer for sequence to sequence (Vaswani et al., 2017).

Shape legend: B batch, S source tokens, T target tokens, D model width, V target vocabulary.

    memory = encoder(embed_src(source), mask=padding)                    # (B, S, D)
    h = decoder(embed_tgt(target_in), mask=causal, context=memory,
                context_mask=padding)                                    # (B, T, D)
    logits = head(h)                                                     # (B, T, V)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from attnkit.functional import masks
from attnkit.functional.masks import Mask
from attnkit.models.blocks import TransformerStack
from attnkit.models.builders import build_stack
from attnkit.models.classifier import valid_from_lengths
from attnkit.models.config import ModelConfig
from attnkit.models.decoder import new_caches
from attnkit.models.embeddings import TokenEmbedding, build_positions

__all__ = ["Seq2SeqTransformer", "build_seq2seq"]


class Seq2SeqTransformer(nn.Module):
    """Encoder over the source, causal decoder with cross-attention over the encoder output."""

    def __init__(self, *, source_embedding: TokenEmbedding, target_embedding: TokenEmbedding,
                 source_positions: nn.Module, target_positions: nn.Module,
                 encoder: TransformerStack, decoder: TransformerStack, dim: int,
                 target_vocab_size: int, tie_embeddings: bool = True, dropout: float = 0.0,
                 pad_id: int = 0) -> None:
        super().__init__()
        self.source_embedding, self.target_embedding = source_embedding, target_embedding
        self.source_positions, self.target_positions = source_positions, target_positions
        self.encoder, self.decoder = encoder, decoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, target_vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.target_embedding.table.weight
        self.pad_id = pad_id

    def encode(self, source: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Mask]:
        """source (B, S) -> memory (B, S, D) and the padding mask over its keys."""
        valid = valid_from_lengths(lengths, source.shape[1], source.shape[0], source.device)
        if valid is None:
            valid = source != self.pad_id
        key_mask = masks.padding(valid)
        h = self.dropout(self.source_positions(self.source_embedding(source)))
        return self.encoder(h, mask=key_mask), key_mask

    def decode(self, target_in: Tensor, memory: Tensor, memory_mask: Mask,
               caches: list[Any] | None = None) -> Tensor:
        """target_in (B, T) -> logits (B, T, V)."""
        offset = caches[0].position if caches else 0
        h = self.dropout(self.target_positions(self.target_embedding(target_in), offset))
        h = self.decoder(h, mask=masks.causal(), context=memory, context_mask=memory_mask,
                         caches=caches)
        return self.head(h)

    def forward(self, source: Tensor, target_in: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Teacher forcing: source (B, S), target_in (B, T) -> logits (B, T, V)."""
        memory, memory_mask = self.encode(source, lengths)
        return self.decode(target_in, memory, memory_mask)

    @torch.no_grad()
    def greedy_decode(self, source: Tensor, *, bos_id: int, eos_id: int, max_length: int,
                      lengths: Tensor | None = None, use_cache: bool = True,
                      suppress_ids: tuple[int, ...] = ()) -> Tensor:
        """Greedy decoding from ``bos_id`` until ``eos_id`` or ``max_length`` tokens: (B, <=T).

        ``suppress_ids`` are never produced (e.g. padding and ``bos_id``)."""
        was_training = self.training
        self.eval()
        try:
            memory, memory_mask = self.encode(source, lengths)
            out = torch.full((source.shape[0], 1), bos_id, dtype=torch.long,
                             device=source.device)
            done = torch.zeros(source.shape[0], dtype=torch.bool, device=source.device)
            caches = new_caches(self.decoder, cache="static", max_length=max_length + 1) \
                if use_cache else None
            for _ in range(max_length):
                step = out[:, -1:] if caches is not None else out
                logits = self.decode(step, memory, memory_mask, caches)[:, -1]  # (B, V)
                if suppress_ids:
                    logits[:, list(suppress_ids)] = float("-inf")
                token = logits.argmax(-1)
                token = token.masked_fill(done, eos_id)
                done = done | (token == eos_id)
                out = torch.cat([out, token[:, None]], dim=1)
                if bool(done.all()):
                    break
            return out
        finally:
            self.train(was_training)

    @torch.no_grad()
    def beam_decode(self, source: Tensor, *, bos_id: int, eos_id: int, max_length: int,
                    beam_size: int = 4, length_penalty: float = 1.0,
                    lengths: Tensor | None = None, use_cache: bool = True) -> Tensor:
        """Beam search from ``bos_id``: the best of ``beam_size`` hypotheses per source, (B, <=T).

        Each step extends every live beam by every token and keeps the ``beam_size`` highest
        total log-probabilities; a beam that produced ``eos_id`` stays with its score frozen
        (and pads with ``eos_id``). The answer is the finished beam with the highest
        ``log p / length ** length_penalty`` (Wu et al., 2016, without the +5 offset; length
        counts generated tokens up to and including eos). ``beam_size=1`` is greedy decoding.
        """
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0 (0: rank by total log-probability), "
                             f"got {length_penalty}")
        was_training = self.training
        self.eval()
        try:
            batch, k, device = source.shape[0], beam_size, source.device
            # Every beam gets its own copy of the source so that caches reorder by row.
            memory, memory_mask = self.encode(
                source.repeat_interleave(k, 0),
                None if lengths is None else lengths.repeat_interleave(k, 0))
            out = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=device)
            scores = torch.full((batch, k), float("-inf"), device=device)
            scores[:, 0] = 0.0  # all beams start identical: expand only the first
            done = torch.zeros(batch * k, dtype=torch.bool, device=device)
            generated = torch.zeros(batch * k, dtype=torch.long, device=device)
            caches = new_caches(self.decoder, cache="static", max_length=max_length + 1) \
                if use_cache else None
            rows = torch.arange(batch, device=device)[:, None] * k  # (B, 1) first row of each
            for _ in range(max_length):
                step = out[:, -1:] if caches is not None else out
                logp = self.decode(step, memory, memory_mask, caches)[:, -1].float() \
                    .log_softmax(-1)  # (B*k, V)
                vocab = logp.shape[-1]
                # A finished beam may only repeat eos, at no cost.
                frozen = torch.full_like(logp, float("-inf"))
                frozen[:, eos_id] = 0.0
                logp = torch.where(done[:, None], frozen, logp)
                total = (scores.reshape(-1, 1) + logp).reshape(batch, k * vocab)
                scores, flat = total.topk(k, dim=-1)  # (B, k)
                parent = (rows + flat // vocab).reshape(-1)  # (B*k,) row each new beam extends
                token = (flat % vocab).reshape(-1)
                out = torch.cat([out.index_select(0, parent), token[:, None]], dim=1)
                generated = generated.index_select(0, parent) + (~done.index_select(0, parent))
                done = done.index_select(0, parent) | (token == eos_id)
                if caches is not None:
                    for cache in caches:
                        cache.reorder(parent)
                if bool(done.all()):
                    break
            normalized = scores / generated.reshape(batch, k).clamp(min=1).float() \
                .pow(length_penalty)
            # Unfinished beams (max_length reached) compete too: they are the best available.
            best = rows.reshape(-1) + normalized.argmax(-1)  # (B,)
            chosen = out.index_select(0, best)
            # Trim columns after the last row's eos, as greedy_decode stops there.
            finished = chosen == eos_id
            first_eos = torch.where(finished.any(1), finished.float().argmax(1),
                                    torch.full_like(best, chosen.shape[1] - 1))
            return chosen[:, : int(first_eos.max()) + 1]
        finally:
            self.train(was_training)


def build_seq2seq(config: ModelConfig, *, source_vocab_size: int, target_vocab_size: int,
                  pad_id: int = 0) -> Seq2SeqTransformer:
    d = config.d_model
    return Seq2SeqTransformer(
        source_embedding=TokenEmbedding(vocab_size=source_vocab_size, dim=d),
        target_embedding=TokenEmbedding(vocab_size=target_vocab_size, dim=d),
        source_positions=build_positions(config.positional, max_length=config.max_length, dim=d),
        target_positions=build_positions(config.positional, max_length=config.max_length, dim=d),
        encoder=build_stack(config, num_layers=config.num_layers),
        decoder=build_stack(config, num_layers=config.num_decoder_layers or config.num_layers,
                            cross=True),
        dim=d, target_vocab_size=target_vocab_size, tie_embeddings=config.tie_embeddings,
        dropout=config.dropout, pad_id=pad_id)
