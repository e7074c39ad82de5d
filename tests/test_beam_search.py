"""Beam search of Seq2SeqTransformer: beam 1 is greedy, the KV cache follows the beams, and beam
search finds a more probable translation than greedy decoding where one exists."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch import Tensor

from attnkit.models.config import ModelConfig
from attnkit.models.seq2seq import Seq2SeqTransformer, build_seq2seq

BOS, EOS = 2, 3


def small_model(seed: int) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    config = ModelConfig(d_model=32, num_heads=4, d_ff=64, num_layers=2, max_length=64,
                         positional="rope", dropout=0.0)
    model = build_seq2seq(config, source_vocab_size=40, target_vocab_size=30)
    # Sharpen the output so that sequences end at different lengths (eos is reachable).
    with torch.no_grad():
        model.head.weight.mul_(4.0)
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_of_one_is_greedy(seed: int) -> None:
    model = small_model(seed)
    source = torch.randint(4, 40, (6, 11))
    lengths = torch.tensor([11, 9, 4, 11, 7, 2])
    greedy = model.greedy_decode(source, bos_id=BOS, eos_id=EOS, max_length=20, lengths=lengths)
    beam = model.beam_decode(source, bos_id=BOS, eos_id=EOS, max_length=20, lengths=lengths,
                             beam_size=1)
    assert torch.equal(greedy, beam)


@pytest.mark.parametrize("seed", [0, 3])
def test_beam_with_cache_equals_beam_without(seed: int) -> None:
    """The static KV cache is reordered with the surviving beams (StaticKVCache.reorder)."""
    model = small_model(seed)
    source = torch.randint(4, 40, (4, 8))
    kwargs: dict[str, Any] = dict(bos_id=BOS, eos_id=EOS, max_length=15, beam_size=5,
                                  length_penalty=0.6)
    cached = model.beam_decode(source, **kwargs)
    uncached = model.beam_decode(source, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert bool((cached[:, 0] == BOS).all())


class TableModel(Seq2SeqTransformer):
    """Next-token probabilities depend only on the previous token: a case built by hand."""

    def __init__(self, table: dict[int, list[float]]) -> None:
        torch.nn.Module.__init__(self)
        self.table = table

    def encode(self, source: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Any]:
        return torch.zeros(source.shape[0], 1, 1), None

    def decode(self, target_in: Tensor, memory: Tensor, memory_mask: Any,
               caches: list[Any] | None = None) -> Tensor:
        rows = [self.table[int(t)] for t in target_in[:, -1]]
        logits = torch.tensor(rows).log()  # (B, V)
        return logits[:, None].expand(-1, target_in.shape[1], -1)


def sequence_log_prob(model: TableModel, ids: list[int]) -> float:
    return sum(torch.tensor(model.table[a][b]).log().item() for a, b in itertools.pairwise(ids))


def test_beam_finds_a_more_probable_sequence_than_greedy() -> None:
    # ids: 0 pad, 1 unk, 2 bos, 3 eos, 4 "A", 5 "B". Greedy takes A (0.6) but then only reaches
    # eos with 0.34: p = 0.204. B (0.4) then eos (0.9) has p = 0.36.
    tiny = 1e-6
    model = TableModel({
        BOS: [tiny, tiny, tiny, tiny, 0.6, 0.4],
        4: [tiny, tiny, tiny, 0.34, 0.33, 0.33],
        5: [tiny, tiny, tiny, 0.9, 0.05, 0.05],
        EOS: [tiny, tiny, tiny, 1.0, tiny, tiny],
    })
    source = torch.ones(1, 3, dtype=torch.long)
    greedy = model.greedy_decode(source, bos_id=BOS, eos_id=EOS, max_length=2, use_cache=False)
    beam = model.beam_decode(source, bos_id=BOS, eos_id=EOS, max_length=2, beam_size=2,
                             length_penalty=0.0, use_cache=False)
    assert greedy[0].tolist() == [BOS, 4, EOS]
    assert beam[0].tolist() == [BOS, 5, EOS]
    assert sequence_log_prob(model, beam[0].tolist()) > sequence_log_prob(model,
                                                                           greedy[0].tolist())


def test_length_penalty_favours_longer_finished_beams() -> None:
    # Short: bos->eos with 0.3. Long: bos->A (0.7) -> A (0.8) -> eos (0.5): total 0.28, less
    # than 0.3 in total, but more per token; a length penalty of 1 picks the long one.
    tiny = 1e-6
    model = TableModel({
        BOS: [tiny, tiny, tiny, 0.3, 0.7, tiny],
        4: [tiny, tiny, tiny, 0.2, tiny, 0.8],
        5: [tiny, tiny, tiny, 0.5, 0.25, 0.25],
        EOS: [tiny, tiny, tiny, 1.0, tiny, tiny],
    })
    source = torch.ones(1, 3, dtype=torch.long)
    common: dict[str, Any] = dict(bos_id=BOS, eos_id=EOS, max_length=5, beam_size=3,
                                  use_cache=False)
    assert model.beam_decode(source, length_penalty=0.0, **common)[0].tolist() == [BOS, EOS]
    assert model.beam_decode(source, length_penalty=1.0, **common)[0].tolist() == [BOS, 4, 5, EOS]


def test_beam_rejects_bad_settings() -> None:
    model = small_model(0)
    source = torch.randint(4, 40, (1, 5))
    with pytest.raises(ValueError, match="beam_size must be >= 1, got 0"):
        model.beam_decode(source, bos_id=BOS, eos_id=EOS, max_length=4, beam_size=0)
    with pytest.raises(ValueError, match="length_penalty must be >= 0"):
        model.beam_decode(source, bos_id=BOS, eos_id=EOS, max_length=4, length_penalty=-1.0)
