"""Next-token sampling by value: config checks, top-k and nucleus (top-p) filters, wiring.

Nucleus sampling (Holtzman et al., 2020) keeps the smallest set of most likely tokens whose
probability reaches ``p``: a token is dropped when the tokens ranked before it already reach p.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.models import SamplingConfig
from attnkit.models.generation import filter_logits, sample_next

NEG = float("-inf")


@pytest.mark.parametrize("options, message", [
    ({"temperature": -0.5}, r"temperature must be >= 0 \(0 = greedy\), got -0.5"),
    ({"top_k": 0}, "top_k must be >= 1, got 0"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
])
def test_sampling_config_names_the_bad_value(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**options)  # type: ignore[arg-type]


def test_sampling_config_accepts_the_edges() -> None:
    assert SamplingConfig(temperature=0.0, top_k=1, top_p=1.0).top_p == 1.0


def test_top_k_keeps_the_k_largest_per_row() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 6.0, -2.0]])
    got = filter_logits(logits, top_k=2)
    want = torch.tensor([[NEG, 3.0, NEG, 2.0], [5.0, NEG, 6.0, NEG]])
    assert torch.equal(got, want)
    assert torch.equal(filter_logits(logits, top_k=4), logits)  # k = V keeps everything


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    # probabilities 0.5, 0.25, 0.125, 0.125 exactly (powers of two)
    logits = torch.tensor([[math.log(4), math.log(2), 0.0, 0.0],
                           [0.0, math.log(2), 0.0, math.log(4)]], dtype=torch.float64)
    got = filter_logits(logits, top_p=0.5)  # the first token alone reaches 0.5
    assert torch.equal(torch.isinf(got), torch.tensor([[False, True, True, True],
                                                       [True, True, True, False]]))
    got = filter_logits(logits, top_p=0.6)  # 0.5 < 0.6: the second token is needed too
    assert torch.equal(torch.isinf(got), torch.tensor([[False, False, True, True],
                                                       [True, False, True, False]]))
    kept = ~torch.isinf(got)
    assert torch.equal(got[kept], logits[kept])  # kept logits are unchanged


def test_top_p_one_keeps_even_negligible_tokens() -> None:
    logits = torch.tensor([[0.0, -100.0, -200.0]])  # the tail's probability rounds to 0
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)


def test_sample_next_greedy_and_filters_are_wired() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 2.9]])
    assert sample_next(logits, SamplingConfig()).tolist() == [1, 0]
    g = torch.Generator().manual_seed(0)
    draws = 400
    many = logits.repeat(draws, 1)
    nucleus = sample_next(many, SamplingConfig(temperature=1.0, top_p=0.5), g)
    assert nucleus.view(draws, 2).eq(torch.tensor([1, 0])).all(), "top_p was not applied"
    top1 = sample_next(many, SamplingConfig(temperature=5.0, top_k=1), g)
    assert top1.view(draws, 2).eq(torch.tensor([1, 0])).all(), "top_k was not applied"


def test_temperature_divides_the_logits() -> None:
    """Token frequencies follow softmax(logits / T): near-uniform at high T, peaked at low T."""
    logits = torch.tensor([[0.0, 1.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(1)
    for temperature in (0.25, 1.0, 4.0):
        p_one = torch.softmax(torch.tensor([0.0, 1.0]) / temperature, -1)[1].item()
        share = sample_next(logits, SamplingConfig(temperature=temperature), g).float().mean()
        assert share.item() == pytest.approx(p_one, abs=0.03)


def test_filters_work_on_every_row_of_any_leading_shape() -> None:
    """(B, T, V) logits filter row by row exactly as each (1, V) row alone; a top_k at or above
    V keeps everything, also when it is larger than the other dims."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)  # B=2, T=3, V=6
    for options in ({"top_k": 4}, {"top_k": 2}, {"top_p": 0.5}, {"top_k": 5, "top_p": 0.7}):
        got = filter_logits(logits, **options)  # type: ignore[arg-type]
        rows = [filter_logits(row[None], **options)[0]  # type: ignore[arg-type]
                for row in logits.reshape(-1, 6)]
        assert torch.equal(got, torch.stack(rows).view(2, 3, 6)), options
    assert torch.isinf(filter_logits(logits, top_k=4)).sum(-1).eq(2).all()
    for k in (6, 7):
        assert torch.equal(filter_logits(logits, top_k=k), logits)


def test_sample_next_on_the_logits_of_one_sequence() -> None:
    """Logits (V,) of one sequence give one id as a 0-D tensor, greedy or sampled."""
    logits = torch.tensor([0.0, 2.0, 1.0, -1.0])
    greedy = sample_next(logits, SamplingConfig())
    assert greedy.shape == () and greedy.item() == 1
    g = torch.Generator().manual_seed(3)
    draws = [sample_next(logits, SamplingConfig(temperature=1.0, top_k=2), g) for _ in range(200)]
    assert all(d.shape == () for d in draws)
    assert {int(d) for d in draws} == {1, 2}  # both survivors of top-2 drawn, nothing else
    suppressed = sample_next(logits, SamplingConfig(suppress_ids=(1,)))
    assert suppressed.shape == () and suppressed.item() == 2
