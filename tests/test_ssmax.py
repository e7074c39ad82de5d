"""Scalable-Softmax attention (Nakanishi, 2025) against a float64 transcription."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.functional import masks
from attnkit.layers import StaticKVCache, build_attention
from kinds_reference import linear64, merge64, project64


def reference(layer, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """SSMax(z)_j = n^(s z_j) / sum_j' n^(s z_j'), n = keys the query may attend to."""
    q, k, v = project64(layer, x, layer.layout.num_heads, layer.layout.num_kv_heads)
    z = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, L, S)
    n = allowed.sum(-1, keepdim=True).double()  # (B|1, 1, L, 1)
    s = layer.s.detach().double().view(1, -1, 1, 1)
    powers = torch.where(allowed, n ** (s * z), torch.zeros_like(z))
    weights = powers / powers.sum(-1, keepdim=True)
    return linear64(layer.out_proj, merge64(weights @ v))


def make():
    layer = build_attention("ssmax", dim=24, num_heads=3).double()
    with torch.no_grad():
        layer.s.copy_(torch.tensor([0.2, 0.5, 1.1]))
    return layer


def test_ssmax_causal_counts_keys_per_query() -> None:
    layer, x = make(), torch.randn(2, 10, 24, dtype=torch.float64)
    allowed = torch.ones(10, 10, dtype=torch.bool).tril()[None, None]
    torch.testing.assert_close(layer(x, mask=masks.causal()), reference(layer, x, allowed))


def test_ssmax_padding_and_arbitrary_masks() -> None:
    layer, x = make(), torch.randn(2, 10, 24, dtype=torch.float64)
    lengths = torch.tensor([10, 6])
    allowed = (torch.arange(10)[None, :] < lengths[:, None])[:, None, None, :].expand(2, 1, 10, 10)
    torch.testing.assert_close(layer(x, mask=masks.padding(lengths)),
                               reference(layer, x, allowed))
    both = masks.causal() & masks.padding(lengths)
    torch.testing.assert_close(layer(x, mask=both),
                               reference(layer, x, allowed & torch.ones(10, 10).tril().bool()))
    window = masks.sliding_window(2, 1)  # not causal/padding: counted from the dense mask
    dense = window.dense(10, 10)
    torch.testing.assert_close(layer(x, mask=window), reference(layer, x, dense))


def test_ssmax_decoding_uses_the_growing_key_count() -> None:
    layer, x = make(), torch.randn(1, 7, 24, dtype=torch.float64)
    cache = StaticKVCache(7)
    steps = [layer(x[:, i:i + 1], cache=cache) for i in range(7)]
    torch.testing.assert_close(torch.cat(steps, 1), layer(x, mask=masks.causal()))


def test_ssmax_factor_is_computed_in_float32_for_half_precision_queries() -> None:
    """bf16 queries get the float32 factor rounded once (not log and product rounded in bf16);
    the same code path keeps dtypes consistent under CUDA autocast (next test)."""
    layer = build_attention("ssmax", dim=32, num_heads=2)
    mask = masks.padding(torch.arange(1, 301))  # key counts 1..300
    q, k = torch.randn(300, 2, 1, 16), torch.randn(300, 2, 300, 16)
    factor = layer.logit_factor(q.bfloat16(), k.bfloat16(), mask)
    assert factor.dtype == torch.bfloat16
    assert torch.equal(factor, layer.logit_factor(q, k, mask).bfloat16())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (autocast runs log in fp32)")
def test_ssmax_under_cuda_bf16_autocast_keeps_one_dtype() -> None:
    layer = build_attention("ssmax", dim=32, num_heads=2).cuda()
    x = torch.randn(2, 7, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x, mask=masks.padding(torch.tensor([7, 4], device="cuda")))
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
