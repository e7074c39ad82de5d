"""Adaptive attention span (Sukhbaatar et al., 2019) against a float64 transcription."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attnkit.backends import cpu_flash, span_band
from attnkit.backends.span_band import banded_span_attention, log_ramp_table
from attnkit.engine import span_ramp_attention
from attnkit.functional import masks
from attnkit.functional.bias import SpanRampBias
from attnkit.layers import StaticKVCache, build_attention
from kinds_reference import linear64, merge64, project64


def reference(layer, x: torch.Tensor, causal: bool) -> torch.Tensor:
    heads, s_max, ramp = layer.layout.num_heads, layer.max_span, layer.ramp
    q, k, v = project64(layer, x, heads, layer.layout.num_kv_heads)
    length = x.shape[1]
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(),
                                    float("-inf"))
    weights = torch.softmax(scores, -1)
    i = torch.arange(length, dtype=torch.float64)
    distance = (i[:, None] - i[None, :]).abs()  # x in the paper
    z = layer.span_fraction.detach().double().clamp(0, 1) * s_max  # (H,)
    ramp_mask = ((ramp + z[:, None, None] - distance) / ramp).clamp(0, 1)  # m_z(x)
    ramp_mask = ramp_mask * (distance < s_max)  # the model holds at most S positions
    weights = weights * ramp_mask
    weights = weights / weights.sum(-1, keepdim=True)
    return linear64(layer.out_proj, merge64(weights @ v))


@pytest.mark.parametrize("causal", [True, False])
def test_adaptive_span_matches_paper(causal: bool) -> None:
    layer = build_attention("adaptive_span", dim=24, num_heads=3, max_span=16, ramp=4,
                            block=3).double()
    with torch.no_grad():
        layer.span_fraction.copy_(torch.tensor([0.1, 0.45, 0.8]))  # spans 1.6, 7.2, 12.8
    x = torch.randn(2, 20, 24, dtype=torch.float64)
    expected = reference(layer, x, causal)
    got = layer(x, mask=masks.causal() if causal else None)  # checkpointed training path
    torch.testing.assert_close(got, expected)
    with torch.no_grad():  # inference path: ramp biases shared between interior blocks
        torch.testing.assert_close(layer(x, mask=masks.causal() if causal else None), expected)
        torch.testing.assert_close(layer(x), reference(layer, x, False))
    assert layer.current_window() == 15  # ceil(12.8 + 4) - 1 = 16 -> capped at max_span - 1


def test_full_span_is_exact_attention() -> None:
    layer = build_attention("adaptive_span", dim=16, num_heads=2, max_span=32,
                            span_init=1.0).double()
    mha = build_attention("mha", dim=16, num_heads=2).double()
    mha.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "span_fraction"})
    x = torch.randn(2, 30, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), mha(x))
    torch.testing.assert_close(layer(x, mask=masks.causal()), mha(x, mask=masks.causal()))


def _scored_pairs(layer, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> int:
    """Query-key pairs handed to the fused kernel in one training forward, over all calls."""
    real = cpu_flash.forward_op()
    pairs = []

    def recording(q, k, *args, **kwargs):
        pairs.append(q.shape[2] * k.shape[2])
        return real(q, k, *args, **kwargs)

    monkeypatch.setattr(cpu_flash, "forward_op", lambda: recording)
    layer(x)
    monkeypatch.undo()
    return sum(pairs)


def test_compute_is_restricted_to_the_span_and_grows_with_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pairs actually scored (not wall time) grow with the span; a full span scores all L x L."""
    length = 2048
    layer = build_attention("adaptive_span", dim=16, num_heads=1, max_span=length, ramp=32,
                            block=128)
    x = torch.randn(1, length, 16)
    pairs = []
    for fraction in (0.0, 0.3, 1.0):  # windows 31, 645, 2047 (everything)
        with torch.no_grad():
            layer.span_fraction.fill_(fraction)
        pairs.append(_scored_pairs(layer, x, monkeypatch))
    assert pairs[0] < pairs[1] < pairs[2] == length * length
    assert pairs[0] < 0.1 * length * length  # band of 2 * 31 + 1 keys, in 128-row blocks
    assert pairs[1] < 0.75 * length * length


def dense_span_attention(q, k, v, span_fraction, *, max_span, ramp, window, allowed):
    """softmax(q k^T / sqrt(D) + log m_z(|i - j|)) v over all pairs, autograd throughout."""
    lq, lk = q.shape[2], k.shape[2]
    table = log_ramp_table(span_fraction, max_span=max_span, ramp=ramp, window=window,
                           dtype=q.dtype)
    pos_q = torch.arange(lq)[:, None] + (lk - lq)
    distance = (pos_q - torch.arange(lk)[None, :]).abs().clamp(max=window + 1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + table[:, distance]
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    keep = torch.isfinite(scores).any(-1, keepdim=True)
    weights = torch.softmax(torch.where(keep, scores, 0.0), -1) * keep
    return weights @ v


#: Span fractions: exactly 0 or at least 1e-4. Just above 0 the ramp's first key has weight
#: ~ z / R, and both formulas reach d/dz through log(z / R) (slope 1 / z): at z = 1e-12 rounding
#: grows to ~1e-5 relative in float64, a conditioning limit, not a disagreement of the formulas.
SPAN_FRACTIONS = st.one_of(st.just(0.0), st.floats(1e-4, 1.0))


#: The three ways banded_span_attention runs: the fused CPU kernel (training, Dv == D), the
#: checkpointed SDPA blocks (training otherwise: here Dv != D) and the inference blocks.
PATHS = ["fused", "checkpointed", "inference"]


@settings(max_examples=25, deadline=None)
@example(lq=20, extra_keys=-12, block=2, spans=[0.0, 0.1], mask_kind="none", path="inference",
         span_dtype=torch.float64, train_span=True, seed=1)  # blocks with no key at all
@example(lq=20, extra_keys=-12, block=3, spans=[0.0, 0.1], mask_kind="causal", path="fused",
         span_dtype=torch.float32, train_span=True, seed=2)
@example(lq=20, extra_keys=-12, block=5, spans=[0.0, 0.1], mask_kind="none",
         path="checkpointed", span_dtype=torch.float64, train_span=False, seed=3)
@given(lq=st.integers(1, 40), extra_keys=st.integers(-16, 6), block=st.integers(1, 16),
       spans=st.lists(SPAN_FRACTIONS, min_size=2, max_size=2),
       mask_kind=st.sampled_from(["none", "causal", "padding", "padding_causal"]),
       path=st.sampled_from(PATHS), span_dtype=st.sampled_from([torch.float64, torch.float32]),
       train_span=st.booleans(), seed=st.integers(0, 2**16))
def test_band_matches_dense_formula_with_gradients(lq, extra_keys, block, spans, mask_kind, path,
                                                   span_dtype, train_span, seed) -> None:
    """Every path against the dense formula, forward and backward, with more keys than queries
    or fewer (then the first queries have no key in the band: zeros), rows emptied by a mask,
    and a span fraction of another dtype than the activations (computed at theirs)."""
    g = torch.Generator().manual_seed(seed)
    lk, max_span, ramp = max(1, lq + extra_keys), 12, 3
    training = path != "inference"
    q, k = (torch.randn(2, 2, n, 5, generator=g, dtype=torch.float64, requires_grad=training)
            for n in (lq, lk))
    v = torch.randn(2, 2, lk, 3 if path == "checkpointed" else 5, generator=g,
                    dtype=torch.float64, requires_grad=training)
    fraction = torch.tensor(spans, dtype=span_dtype, requires_grad=training and train_span)
    window = min(max_span - 1, int(torch.ceil(fraction.max() * max_span + ramp)) - 1)
    mask = {"none": None, "causal": masks.causal(),
            "padding": masks.padding([max(1, lk - 3), 0]),  # the second one has no key at all
            "padding_causal": masks.padding([lk, 1]) & masks.causal()}[mask_kind]
    allowed = None if mask is None else mask.dense(lq, lk)
    assert span_band.fused_span_supported(q, v, 0.0) == (path != "checkpointed")
    with torch.set_grad_enabled(training):
        got = banded_span_attention(q, k, v, fraction, max_span=max_span, ramp=ramp,
                                    window=window, mask=mask, block=block)
    exact = fraction.detach().double().requires_grad_(training and train_span)
    want = dense_span_attention(q, k, v, exact, max_span=max_span, ramp=ramp, window=window,
                                allowed=allowed)
    torch.testing.assert_close(got, want)
    if not training:
        assert not got.requires_grad
        return
    inputs = (q, k, v, fraction) if train_span else (q, k, v)
    grad = torch.randn(got.shape, generator=g, dtype=torch.float64)
    got_grads = torch.autograd.grad(got, inputs, grad)
    want_grads = torch.autograd.grad(want, (q, k, v, exact)[:len(inputs)], grad)
    for name, a, b in zip(["q", "k", "v", "span"], got_grads, want_grads):
        torch.testing.assert_close(a, b.to(a.dtype), msg=lambda m, name=name: f"d{name}: {m}")


def test_span_gradient_reaches_the_ramp_only() -> None:
    # Spans 2.4 and 6: the ramps (R = 3) lie inside the window, so both heads get a gradient;
    # a span past max_span + R has no ramp inside the window and gets none.
    q, k, v = (torch.randn(1, 3, 30, 4, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    fraction = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    out = banded_span_attention(q, k, v, fraction, max_span=12, ramp=3, window=11, mask=None,
                                block=7)
    (d_span,) = torch.autograd.grad(out.square().sum(), fraction)
    assert d_span[0] != 0 and d_span[1] != 0 and d_span[2] == 0


def test_span_gradient_and_penalty() -> None:
    layer = build_attention("adaptive_span", dim=16, num_heads=2, max_span=16, ramp=4,
                            span_init=0.3, span_loss=0.01)
    x = torch.randn(2, 24, 16)
    layer(x).square().sum().backward()
    assert layer.span_fraction.grad is not None and layer.span_fraction.grad.abs().sum() > 0
    penalty = layer.auxiliary_loss()
    assert penalty.item() == pytest.approx(0.01 * 16 * 0.3, rel=1e-6)


def test_decoding_with_static_cache_and_rejected_options() -> None:
    layer = build_attention("adaptive_span", dim=16, num_heads=2, max_span=8, ramp=2,
                            span_init=0.4).double()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    cache = StaticKVCache(12)
    steps = [layer(x[:, i:i + 1], cache=cache) for i in range(12)]
    torch.testing.assert_close(torch.cat(steps, 1), layer(x, mask=masks.causal()))
    with pytest.raises(ValueError, match="span_init"):
        build_attention("adaptive_span", dim=16, num_heads=2, span_init=1.5)
    with pytest.raises(ValueError, match="alibi"):
        build_attention("adaptive_span", dim=16, num_heads=2, alibi=True)


@pytest.mark.parametrize("window", [5, 7, 10])  # 10: past max_span, the table still stops there
def test_ramp_tables_match_their_definitions(window: int) -> None:
    """log m_z(x) and its derivative in the span fraction, from the paper's formula, for
    fractions below 0, at 0, inside, at 1 and above 1 (clamped to [0, 1])."""
    max_span, ramp = 8, 3
    fractions = [-0.3, 0.0, 0.3, 0.5, 0.9, 1.0, 1.4]
    # A float32 fraction: the tables are computed (and returned) at the dtype asked for.
    fraction = torch.tensor(fractions, dtype=torch.float32)
    table = log_ramp_table(fraction, max_span=max_span, ramp=ramp, window=window,
                           dtype=torch.float64)
    assert table.dtype == torch.float64 and table.shape == (len(fractions), window + 2)
    z = fraction.double().clamp(0, 1)[:, None] * max_span
    x = torch.arange(window + 2, dtype=torch.float64)
    m = ((ramp + z - x) / ramp).clamp(0, 1) * (x < max_span) * (x <= window)
    torch.testing.assert_close(table, m.log(), rtol=1e-12, atol=0)
    assert torch.isinf(table[:, -1]).all()  # the "beyond the window" column

    exact = fraction.double().requires_grad_()
    jacobian = torch.autograd.functional.jacobian(
        lambda f: log_ramp_table(f, max_span=max_span, ramp=ramp, window=window,
                                 dtype=torch.float64), exact)  # (H, M, H)
    want = torch.diagonal(jacobian, dim1=0, dim2=2).T  # d table[h, x] / d fraction[h]
    slopes = span_band.ramp_slope_table(fraction, max_span=max_span, ramp=ramp, window=window,
                                        dtype=torch.float64)
    assert slopes.dtype == torch.float64
    torch.testing.assert_close(slopes, want, rtol=1e-12, atol=0)
    # slope max_span / (R * m) on the ramp; no slope below a fraction of 0 or from 1 on
    assert (slopes[0] == 0).all() and (slopes[-2:] == 0).all()
    assert slopes[3, 4].item() == pytest.approx(max_span / ramp)  # span 4: x = 4 has m = 1


def test_span_blocks_cover_exactly_the_keys_in_the_band() -> None:
    """Each block's key range is the smallest one holding every key within ``window`` of one
    of its rows (bottom-right aligned); blocks with no such key are left out."""
    for lq, lk, window, block in [(10, 3, 2, 4), (10, 3, 2, 5), (7, 7, 0, 3), (5, 20, 3, 2),
                                  (12, 12, 4, 5), (9, 2, 1, 3), (1, 1, 0, 1)]:
        want = []
        for q0 in range(0, lq, block):
            rows = range(q0, min(q0 + block, lq))
            keys = [j for j in range(lk) if any(abs(i + lk - lq - j) <= window for i in rows)]
            if keys:
                want.append((q0, rows[-1] + 1, keys[0], keys[-1] + 1))
        assert span_band.span_blocks(lq, lk, window, block) == want, (lq, lk, window, block)


def test_fused_kernel_takes_cpu_float_attention_without_dropout_only() -> None:
    q = torch.randn(1, 2, 4, 8)
    assert span_band.fused_span_supported(q, torch.randn(1, 2, 4, 8), 0.0)
    assert span_band.fused_span_supported(q.double(), torch.randn(1, 2, 4, 8).double(), 0.0)
    assert not span_band.fused_span_supported(q, torch.randn(1, 2, 4, 6), 0.0)  # Dv != D
    assert not span_band.fused_span_supported(q, q, 0.1)  # dropout
    for dtype in (torch.bfloat16, torch.float16):
        assert not span_band.fused_span_supported(q.to(dtype), q.to(dtype), 0.0)


def test_span_ramp_attention_defaults_gqa_and_dropout() -> None:
    """The engine entry: key/value heads shared by query heads (GQA), no dropout unless asked,
    the block size of the tuning when none is given; dropout (training off the fused kernel)
    drops weights, unbiased on average."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 9, 6, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 11, 6, generator=g, dtype=torch.float64) for _ in range(2))
    ramp = SpanRampBias(torch.tensor([0.2, 0.4, 0.6, 1.0], dtype=torch.float64), 8, 2)
    want = dense_span_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                ramp.span_fraction, max_span=8, ramp=2, window=7, allowed=None)
    got = span_ramp_attention(q, k, v, ramp, window=7, mask=None, block=4)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(
        banded_span_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                              ramp.span_fraction, max_span=8, ramp=2, window=7, mask=None),
        want)  # block: the tuning's span_block
    torch.manual_seed(0)
    dropped = torch.stack([span_ramp_attention(q, k, v, ramp, window=7, mask=None, block=4,
                                               dropout_p=0.5) for _ in range(400)])
    assert (dropped != dropped[:1]).any(-1).any(0).all()  # every row's draws differ
    torch.testing.assert_close(dropped.mean(0), want, rtol=0, atol=0.25)


@pytest.mark.parametrize("fractions, max_span, ramp, lk", [
    ([0.0, 0.0], 12, 3, 30),  # every head's ramp starts at distance 0
    ([0.8, 0.3], 12, 3, 20),  # ramps past the first block's rows: empty left strips
    ([0.25], 8, 1, 30),  # span 2, ramp 1: a single distance on the ramp
    ([1.0, 1.3], 12, 3, 24),  # no ramp inside the window: no gradient at all
])
def test_span_gradient_of_each_ramp_strip(fractions, max_span, ramp, lk) -> None:
    """The fused backward's span gradient (two strips of ramp distances per block, left and
    right of the rows) against autograd through the dense formula, without a mask."""
    g = torch.Generator().manual_seed(len(fractions) + lk)
    heads, lq = len(fractions), 20
    q, k, v = (torch.randn(2, heads, n, 4, generator=g, dtype=torch.float64, requires_grad=True)
               for n in (lq, lk, lk))
    fraction = torch.tensor(fractions, dtype=torch.float64, requires_grad=True)
    window = max_span - 1
    got = banded_span_attention(q, k, v, fraction, max_span=max_span, ramp=ramp, window=window,
                                mask=None, block=4)
    want = dense_span_attention(q, k, v, fraction, max_span=max_span, ramp=ramp, window=window,
                                allowed=None)
    grad = torch.randn(got.shape, generator=g, dtype=torch.float64)
    (got_span,) = torch.autograd.grad(got, fraction, grad)
    (want_span,) = torch.autograd.grad(want, fraction, grad)
    torch.testing.assert_close(got_span, want_span)
    assert (got_span == 0).all() == (min(fractions) >= 1.0)


@pytest.mark.parametrize("shapes", [
    ((1, 2, 6, 4), (1, 4, 6, 4), (1, 4, 6, 4), (2,)),  # key/value heads not repeated (GQA)
    ((2, 2, 6, 4), (1, 2, 6, 4), (1, 2, 6, 4), (2,)),  # batch
    ((1, 2, 6, 4), (1, 2, 6, 4), (1, 2, 5, 4), (2,)),  # key and value lengths
    ((1, 2, 6, 4), (1, 2, 6, 3), (1, 2, 6, 4), (2,)),  # query and key head dims
    ((1, 2, 6, 4), (1, 2, 6, 4), (1, 2, 6, 4), (3,)),  # one span per head
    ((2, 6, 4), (2, 6, 4), (2, 6, 4), (2,)),  # no head dimension
])
def test_shapes_are_checked_before_any_kernel(shapes) -> None:
    """A head-count mismatch reaching the fused kernel ends the process (SIGFPE): every entry
    refuses such shapes with the shapes in the message."""
    q, k, v, fraction = (torch.randn(s) for s in shapes)
    message = (f"got q {tuple(shapes[0])}, k {tuple(shapes[1])}, v {tuple(shapes[2])}, "
               f"span_fraction {tuple(shapes[3])}; repeat grouped key/value heads first "
               "(span_ramp_attention does)$").replace("(", r"\(").replace(")", r"\)")
    options = {"max_span": 8, "ramp": 2, "window": 7, "mask": None, "block": 4}
    for grad in (False, True):
        with pytest.raises(ValueError, match=r"^span attention needs q \(B, H, L, D\), k .*"
                           + message):
            banded_span_attention(q.requires_grad_(grad), k, v, fraction, **options)
    with pytest.raises(ValueError, match=message):
        span_band.fused_span_band(q, k, v, fraction, **options)


@pytest.mark.parametrize("path", PATHS)
def test_a_float32_span_is_used_at_the_precision_of_float64_activations(path: str) -> None:
    """The ramp table is computed at the activations' dtype: over a long span (1000 positions)
    the float32 product span_fraction * max_span alone would be off by ~1e-5 of a position."""
    g = torch.Generator().manual_seed(9)
    training = path != "inference"
    q, k = (torch.randn(1, 1, 160, 4, generator=g, dtype=torch.float64, requires_grad=training)
            for _ in range(2))
    v = torch.randn(1, 1, 160, 3 if path == "checkpointed" else 4, generator=g,
                    dtype=torch.float64, requires_grad=training)
    fraction = torch.tensor([0.1234567], dtype=torch.float32)  # span 123.4567...
    options = {"max_span": 1000, "ramp": 3, "window": 127}
    with torch.set_grad_enabled(training):
        got = banded_span_attention(q, k, v, fraction, mask=None, block=32, **options)
    want = dense_span_attention(q, k, v, fraction.double(), allowed=None, **options)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
