"""Score biases: ALiBi slopes and values, T5 relative buckets, dense biases, sums."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import oracle
from attnkit import attention, masks
from attnkit import bias as biases
from attnkit.backends.blocked import TileSizes, blocked_attention
from attnkit.functional.bias import SpanRampBias, alibi_slopes, relative_position_bucket
from attnkit.functional.math import validate
from conftest import check_against_reference


def paper_slopes(n: int) -> list[float]:
    """ALiBi slopes as Press et al. (2022) describe them, written out independently."""
    def power_of_two(m: int) -> list[float]:
        # Geometric sequence whose first term and ratio are both 2^(-8/m).
        return [2.0 ** (-8.0 * (i + 1) / m) for i in range(m)]

    if math.log2(n).is_integer():
        return power_of_two(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_two(closest) + power_of_two(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 32, 48])
def test_alibi_slopes_follow_the_paper(n: int) -> None:
    slopes = alibi_slopes(n)
    assert slopes.shape == (n,) and slopes.dtype == torch.float64
    torch.testing.assert_close(slopes, torch.tensor(paper_slopes(n), dtype=torch.float64))


def test_alibi_slopes_known_values() -> None:
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(6).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8,
                                        2.0 ** -1, 2.0 ** -3]
    with pytest.raises(ValueError, match="num_heads >= 1, got 0"):
        alibi_slopes(0)


@given(heads=st.integers(1, 9), lq=st.integers(1, 8), lk=st.integers(1, 8),
       offset=st.none() | st.integers(-3, 3))
def test_alibi_values(heads: int, lq: int, lk: int, offset: int | None) -> None:
    got = biases.alibi(heads, offset=offset).dense(lq, lk)
    off = lk - lq if offset is None else offset
    i = torch.arange(lq, dtype=torch.float64).view(-1, 1)
    j = torch.arange(lk, dtype=torch.float64).view(1, -1)
    want = -alibi_slopes(heads).view(-1, 1, 1) * (i + off - j).abs()
    assert got.shape == (1, heads, lq, lk)
    torch.testing.assert_close(got.double()[0], want, atol=1e-6, rtol=1e-6)


def test_alibi_under_causal_is_the_papers_linear_penalty() -> None:
    heads, length = 4, 6
    got = biases.alibi(heads).dense(length, length)[0]
    allowed = masks.causal().dense(length, length)[0, 0]
    i, j = torch.arange(length).view(-1, 1), torch.arange(length).view(1, -1)
    want = alibi_slopes(heads).view(-1, 1, 1) * (j - i)
    torch.testing.assert_close(got[:, allowed].double(), want[:, allowed], rtol=1e-12, atol=0)


def t5_bucket(relative: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """T5's relative-position bucketing (Raffel et al., 2020), scalar and from the definition."""
    offset = 0
    if bidirectional:
        num_buckets //= 2
        if relative > 0:
            offset = num_buckets
        distance = abs(relative)
    else:
        distance = max(-relative, 0)
    exact = num_buckets // 2
    if distance < exact:
        return offset + distance
    log_part = math.log(distance / exact) / math.log(max_distance / exact)
    return offset + min(exact + int(log_part * (num_buckets - exact)), num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
# (6, 4) bidirectional: one exact bucket per side, so distance 1 is the first log-spaced one.
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (4, 3), (10, 6),
                                                       (6, 4)])
def test_relative_position_buckets(bidirectional: bool, num_buckets: int,
                                   max_distance: int) -> None:
    relative = torch.arange(-300, 301)
    got = relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    want = [t5_bucket(int(r), bidirectional, num_buckets, max_distance) for r in relative]
    assert got.tolist() == want
    assert int(got.min()) >= 0 and int(got.max()) < num_buckets


def test_relative_bucket_bias_module() -> None:
    module = biases.relative_buckets(3, num_buckets=8, max_distance=16)
    with torch.no_grad():
        module.table.copy_(torch.randn(8, 3))
    lq, lk = 4, 7
    got = module(lq, lk)
    assert got.shape == (1, 3, lq, lk)
    for i in range(lq):
        for j in range(lk):
            bucket = t5_bucket(j - (i + lk - lq), True, 8, 16)
            assert torch.equal(got[0, :, i, j], module.table[bucket])
    assert list(module.parameters()) == [module.table]
    assert repr(module) == ("relative_buckets(num_heads=3, num_buckets=8, max_distance=16, "
                            "bidirectional=True)")
    with pytest.raises(ValueError, match="num_buckets=2, max_distance=8"):
        biases.relative_buckets(3, num_buckets=2, max_distance=8)


def test_relative_bucket_table_learns_through_attention() -> None:
    """Gradients reach the bucket table through every differentiable path, equal to plain math."""
    definition = oracle.buckets(2, num_buckets=6, max_distance=10, bidirectional=True)
    module = definition.build()
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 3)
    check_against_reference(lambda q, k, v: attention(q, k, v, bias=module, mask=masks.causal()),
                            q, k, v, bias=definition, mask=oracle.causal())
    spec_tiles = TileSizes(block_q=2, block_k=3)
    check_against_reference(
        lambda q, k, v: blocked_attention(validate(q, k, v, mask=None, bias=module, scale=None,
                                                   softcap=None, dropout_p=0.0), spec_tiles),
        q, k, v, bias=definition)


@pytest.mark.parametrize("shape", [(5, 6), (1, 5, 6), (2, 1, 5, 6), (1, 3, 5, 6), (2, 3, 5, 6)])
def test_dense_bias_broadcasts(shape: tuple[int, ...]) -> None:
    table = torch.randn(shape)
    bias = biases.dense(table)
    got = bias.dense(5, 6)
    assert got.dim() == 4
    assert torch.equal(got.expand(2, 3, 5, 6), table.expand(2, 3, 5, 6))
    tile = bias.tile(torch.arange(1, 4), torch.arange(2, 6), 5, 6)
    assert torch.equal(tile, got[..., 1:4, 2:6])


def test_dense_bias_gradient_equals_plain_math() -> None:
    table = torch.randn(2, 3, 4, 6, requires_grad=True)
    bias = biases.dense(table)
    q, k, v = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 6, 5), torch.randn(2, 3, 6, 5)
    for backend in ("auto", "blocked", "reference", "sdpa_dense"):
        check_against_reference(lambda q, k, v, b=backend: attention(q, k, v, bias=bias,
                                                                     backend=b),
                                q, k, v, bias=oracle.dense_bias(table))


def test_sum_of_biases() -> None:
    table = torch.randn(1, 4, 3, 5)
    total = biases.alibi(4) + biases.dense(table)
    assert total.num_heads == 4
    torch.testing.assert_close(total.dense(3, 5), biases.alibi(4).dense(3, 5) + table)
    assert total.tensors() == (table,)
    assert repr(total) == "(alibi(4) + dense_bias((1, 4, 3, 5)))"


def test_score_mod_adds_the_bias() -> None:
    bias = biases.alibi(3)
    mod = bias.score_mod(4, 6)
    score = torch.randn(1, 3, 4, 6)
    got = mod(score, torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.arange(3).view(1, -1, 1, 1),
              torch.arange(4).view(1, 1, -1, 1), torch.arange(6).view(1, 1, 1, -1))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, score + bias.dense(4, 6).float())


@pytest.mark.parametrize("make, message", [
    (lambda: biases.dense(torch.ones(3, 3, dtype=torch.long)), "torch.int64"),
    (lambda: biases.dense(torch.ones(3)), "(3,)"),
    (lambda: biases.dense(torch.ones(1, 1, 1, 3, 3)), "(1, 1, 1, 3, 3)"),
])
def test_bad_bias_arguments(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value)


def test_on_device_moves_fixed_tensors_only() -> None:
    meta = torch.device("meta")
    table = torch.randn(4, 5, requires_grad=True)
    total = biases.alibi(2) + biases.dense(table)
    assert total.on_device(torch.device("cpu")) is total
    moved = total.on_device(meta)
    assert moved.tensors()[0].device == meta and moved.tensors()[0].requires_grad
    assert moved.left.slopes.device == meta  # type: ignore[attr-defined]
    assert total.tensors()[0].device.type == "cpu", "the original is left as it was"
    learned = biases.relative_buckets(2)
    assert learned.on_device(meta) is learned  # modules move with module.to()


class _IndexSum(biases.Bias):
    """A user-written bias that is the same for every sequence and head (batch_size and
    num_heads left at None): ``b + h + 10 q + k``, so a wrong index grid shows in the values."""

    def values(self, b, h, q, k, lq, lk, tensors=None):  # type: ignore[no-untyped-def]
        return (b + h + 10 * q + k).double()


def test_a_bias_for_any_batch_and_head_is_evaluated_once() -> None:
    got = _IndexSum().dense(3, 4)
    assert got.shape == (1, 1, 3, 4)
    want = 10 * torch.arange(3.0).view(-1, 1) + torch.arange(4.0).view(1, -1)
    assert torch.equal(got[0, 0], want.double())


def test_dense_on_a_device_builds_every_index_there() -> None:
    """``dense(device=...)`` evaluates the bias on that device (meta here: any index left on
    the CPU would fail to combine with it)."""
    meta = torch.device("meta")
    for bias in (biases.alibi(3), biases.alibi(2) + biases.alibi(2, offset=1)):
        assert bias.dense(4, 6, device=meta).device == meta
    assert biases.alibi(3).dense(4, 6).dtype == torch.float64


@pytest.mark.parametrize("shape", [(1, 1, 4, 6), (2, 1, 4, 6), (1, 2, 4, 6), (2, 2, 4, 6)])
def test_score_mod_of_a_dense_bias_broadcasts_over_batch_and_heads(
        shape: tuple[int, ...]) -> None:
    """FlexAttention calls ``score_mod`` with the real batch and head indices (0 and 1 here),
    also for a bias shared by every sequence or head."""
    table = torch.randn(shape)
    mod = biases.dense(table).score_mod(4, 6)
    score = torch.randn(2, 2, 4, 6)
    got = mod(score, torch.arange(2).view(-1, 1, 1, 1), torch.arange(2).view(1, -1, 1, 1),
              torch.arange(4).view(1, 1, -1, 1), torch.arange(6).view(1, 1, 1, -1))
    torch.testing.assert_close(got, score + table.expand(2, 2, 4, 6), rtol=0, atol=0)


def test_dense_bias_of_other_lengths_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"dense bias is \(4, 6\) but attention is \(4, 5\)"):
        biases.dense(torch.zeros(2, 3, 4, 6)).dense(4, 5)


def test_sum_takes_batch_and_heads_from_the_side_that_has_them() -> None:
    def dense(*shape: int) -> biases.Bias:
        return biases.dense(torch.zeros(shape))

    cases = [(dense(2, 1, 3, 5) + biases.alibi(4), (2, 4)),
             (biases.alibi(4) + dense(2, 1, 3, 5), (2, 4)),
             (dense(1, 2, 3, 5) + dense(1, 1, 3, 5), (1, 2)),
             (dense(1, 1, 3, 5) + dense(2, 3, 3, 5), (2, 3))]
    for total, (batch, heads) in cases:
        assert (total.batch_size, total.num_heads) == (batch, heads), total


def test_sum_checks_both_sides_at_the_call_shape() -> None:
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    table_a, table_b = torch.randn(2, 1, 3, 5), torch.randn(2, 4, 3, 5)
    total = biases.dense(table_a) + biases.dense(table_b)
    want = attention(q, k, v, bias=biases.dense(table_a + table_b), backend="reference")
    torch.testing.assert_close(attention(q, k, v, bias=total, backend="reference"), want)
    for bad in (biases.dense(torch.zeros(2, 1, 3, 4)) + biases.alibi(4),
                biases.alibi(4) + biases.dense(torch.zeros(2, 1, 3, 4))):
        with pytest.raises(ValueError, match=r"dense bias is \(3, 4\) but attention is \(3, 5\)"):
            attention(q, k, v, bias=bad)
    for bad in (biases.dense(torch.zeros(3, 1, 3, 5)) + biases.alibi(4),
                biases.alibi(4) + biases.dense(torch.zeros(3, 1, 3, 5))):
        with pytest.raises(ValueError, match="batch size 3, q has 2"):
            attention(q, k, v, bias=bad)


def test_sum_values_take_replacement_tensors_in_order() -> None:
    """``tensors=`` (what autograd-aware backends pass) replaces each side's tensors()."""
    total = biases.dense(torch.randn(2, 1, 3, 5)) + biases.dense(torch.randn(1, 2, 3, 5))
    first, second = torch.randn(2, 1, 3, 5), torch.randn(1, 2, 3, 5)
    got = total.tile(torch.arange(3), torch.arange(5), 3, 5, tensors=(first, second))
    torch.testing.assert_close(got, (first + second).expand(2, 2, 3, 5), rtol=0, atol=0)


def test_sum_on_device_moves_the_side_that_has_fixed_tensors() -> None:
    meta = torch.device("meta")
    learned = biases.relative_buckets(2)
    total = learned + biases.alibi(2)
    moved = total.on_device(meta)
    assert moved is not total
    assert moved.left is learned  # type: ignore[attr-defined]
    assert moved.right.slopes.device == meta  # type: ignore[attr-defined]


def test_relative_buckets_documented_defaults_and_limits() -> None:
    defaults = "num_buckets=32, max_distance=128, bidirectional=True"
    assert defaults in repr(biases.relative_buckets(2))
    assert defaults in repr(biases.RelativeBucketBias(2))
    assert biases.relative_buckets(2).table.shape == (32, 2)
    # The smallest legal settings: 4 buckets, max_distance one past num_buckets // 2.
    biases.relative_buckets(1, num_buckets=4, max_distance=3)
    biases.relative_buckets(1, num_buckets=9, max_distance=5)
    for num_buckets, max_distance in ((3, 10), (8, 4), (9, 4), (8, 2)):
        with pytest.raises(ValueError, match=f"num_buckets={num_buckets}, "
                                             f"max_distance={max_distance}"):
            biases.relative_buckets(1, num_buckets=num_buckets, max_distance=max_distance)


def test_relative_buckets_start_small() -> None:
    torch.manual_seed(0)
    table = biases.relative_buckets(16).table.detach()
    assert 0.015 < float(table.std()) < 0.025


def span_ramp_definition(fraction: list[float], max_span: int, ramp: int, lq: int,
                         lk: int) -> torch.Tensor:
    """``log clamp((R + z_h - |i + Lk - Lq - j|) / R, 0, 1)``, ``-inf`` where the ramp is 0,
    ``z_h = clamp(f_h, 0, 1) * max_span``: the docstring's formula, element by element."""
    out = torch.empty(1, len(fraction), lq, lk, dtype=torch.float64)
    for h, f in enumerate(fraction):
        z = min(max(f, 0.0), 1.0) * max_span
        for i in range(lq):
            for j in range(lk):
                m = min(max((ramp + z - abs(i + lk - lq - j)) / ramp, 0.0), 1.0)
                out[0, h, i, j] = math.log(m) if m > 0 else -math.inf
    return out


def test_span_ramp_bias_values_and_gradient_follow_the_formula() -> None:
    # Heads: below 0 (span 0), a span whose ramp reaches exactly 0 at a key (2 + 3 = 5), two
    # spans with no key on a ramp edge, above 1 (clamped to max_span).
    fraction = [-0.3, 0.25, 0.3, 0.55, 1.7]
    max_span, ramp, lq, lk = 8, 3, 5, 12
    spans = torch.tensor(fraction, dtype=torch.float64, requires_grad=True)
    bias = SpanRampBias(spans, max_span=max_span, ramp=ramp)
    assert bias.num_heads == 5 and bias.tensors() == (spans,)
    assert repr(bias) == "span_ramp(heads=5, max_span=8, ramp=3)"
    got = bias.dense(lq, lk)
    want = span_ramp_definition(fraction, max_span, ramp, lq, lk)
    assert got.shape == (1, 5, lq, lk)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    # d/df log((R + f S - x) / R) = S / (R + f S - x) strictly inside the ramp; 0 where the
    # ramp is clamped or the fraction is; never NaN at the -inf entries.
    torch.where(torch.isinf(got), 0.0, got).sum().backward()
    assert spans.grad is not None and torch.isfinite(spans.grad).all()
    i, j = torch.arange(lq, dtype=torch.float64).view(-1, 1), torch.arange(lk).view(1, -1)
    distance = (i + lk - lq - j).abs()
    for h in (2, 3):
        raw = (ramp + fraction[h] * max_span - distance) / ramp
        inside = (raw > 0) & (raw < 1)
        want_grad = (max_span / (ramp * raw[inside])).sum()
        torch.testing.assert_close(spans.grad[h], want_grad)
    assert spans.grad[0] == 0 and spans.grad[4] == 0


def test_span_ramp_bias_uses_replacement_tensors() -> None:
    bias = SpanRampBias(torch.tensor([0.1, 0.9]), max_span=6, ramp=2)
    other = torch.tensor([0.6, 0.2])
    got = bias.tile(torch.arange(4), torch.arange(7), 4, 7, tensors=(other,))
    torch.testing.assert_close(got, SpanRampBias(other, max_span=6, ramp=2).dense(4, 7))
