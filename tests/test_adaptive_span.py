"""Adaptive attention span (Sukhbaatar et al., 2019) against a float64 transcription."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from attnkit.functional import masks
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


def _forward_flops(layer, x: torch.Tensor) -> int:
    # With gradients on, the learned ramp makes torch run SDPA's math kernel, whose matmuls
    # the counter sees (it does not count the fused CPU kernel).
    with FlopCounterMode(display=False) as counter:
        layer(x)
    return counter.get_total_flops()


def test_compute_is_restricted_to_the_span_and_grows_with_it() -> None:
    """Matmul FLOPs actually executed (not wall time) grow with the span; span 1 = full L x L."""
    length = 2048
    layer = build_attention("adaptive_span", dim=16, num_heads=1, max_span=length, ramp=32,
                            block=128)
    x = torch.randn(1, length, 16)
    flops = []
    for fraction in (0.0, 0.3, 1.0):  # windows 31, 645, 2047 (everything)
        with torch.no_grad():
            layer.span_fraction.fill_(fraction)
        flops.append(_forward_flops(layer, x))
    assert flops[0] < flops[1] < flops[2]
    projections = 4 * 2 * length * 16 * 16  # the four dim x dim matmuls
    attention_flops = [f - projections for f in flops]
    full = 2 * 2 * length * length * 16  # q k^T and p v over every pair
    assert attention_flops[2] == full
    assert attention_flops[0] < 0.1 * full  # band of 2 * 31 + 1 keys, in 128-row blocks
    assert attention_flops[1] < 0.75 * full


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
