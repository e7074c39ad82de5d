"""Differential attention (Ye et al., 2024) against a float64 transcription of the paper."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.functional import masks
from attnkit.layers import build_attention
from attnkit.layers.differential import default_lambda_init
from kinds_reference import heads_of, linear64, merge64


def reference(layer, x: torch.Tensor, heads: int, kv_heads: int, causal: bool,
              context: torch.Tensor | None = None) -> torch.Tensor:
    d = layer.layout.head_dim
    q = heads_of(linear64(layer.q_proj, x), 2 * heads)  # halves of head h: 2h, 2h + 1
    source = x if context is None else context  # cross-attention: keys and values from it
    k = heads_of(linear64(layer.k_proj, source), 2 * kv_heads)
    v = heads_of(linear64(layer.v_proj, source), kv_heads)  # (B, Hkv, S, 2d)
    lq1, lk1, lq2, lk2 = (p.detach().double() for p in (layer.lambda_q1, layer.lambda_k1,
                                                         layer.lambda_q2, layer.lambda_k2))
    lam = (math.exp(float(lq1 @ lk1))
           - math.exp(float(lq2 @ lk2))
           + layer.lambda_init)
    length = x.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool).tril() if causal else None
    group = heads // kv_heads
    outs = []
    for h in range(heads):
        maps = []
        for j in range(2):
            kh = (2 * h + j) // group  # GQA: key half of the same group
            s = q[:, 2 * h + j] @ k[:, kh].transpose(-1, -2) / math.sqrt(d)
            if allowed is not None:
                s = s.masked_fill(~allowed, float("-inf"))
            maps.append(torch.softmax(s, -1))
        head = (maps[0] - lam * maps[1]) @ v[:, h // group]  # (B, L, 2d)
        rms = torch.sqrt(head.square().mean(-1, keepdim=True) + 1e-5)
        outs.append(head / rms * layer.head_norm.weight.double() * (1 - layer.lambda_init))
    return linear64(layer.out_proj, merge64(torch.stack(outs, 1)))


@pytest.mark.parametrize(("kv_heads", "causal"), [(2, True), (1, False), (2, False)])
def test_differential_matches_paper(kv_heads: int, causal: bool) -> None:
    layer = build_attention("differential", dim=32, num_heads=2, num_kv_heads=kv_heads,
                            layer_index=3).double()
    with torch.no_grad():
        layer.head_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 32, dtype=torch.float64)
    got = layer(x, mask=masks.causal() if causal else None)
    torch.testing.assert_close(got, reference(layer, x, 2, kv_heads, causal))


def test_lambda_init_follows_depth_schedule() -> None:
    # Paper: lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1)), l = 1..N; layer_index = l - 1.
    for index, expected in [(0, 0.2), (1, 0.8 - 0.6 * math.exp(-0.3)), (11, 0.8 - 0.6 *
                                                                          math.exp(-3.3))]:
        assert default_lambda_init(index) == pytest.approx(expected)
        layer = build_attention("differential", dim=16, num_heads=2, layer_index=index)
        assert layer.lambda_init == pytest.approx(expected)
    with pytest.raises(ValueError, match="layer_index"):
        default_lambda_init(-1)


def test_lambda_zero_is_a_single_softmax_branch() -> None:
    layer = build_attention("differential", dim=16, num_heads=2, layer_index=2).double()
    d = layer.layout.head_dim
    with torch.no_grad():  # exp(lq1.lk1) - exp(0) + lambda_init = 0
        unit = torch.zeros(d, dtype=torch.float64)
        unit[0] = 1.0
        layer.lambda_k1.copy_(unit)
        layer.lambda_q1.copy_(unit * math.log(1.0 - layer.lambda_init))
        layer.lambda_q2.zero_()
        layer.lambda_k2.zero_()
    assert abs(layer.lambda_value().item()) < 1e-12
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    q = heads_of(linear64(layer.q_proj, x), 4)[:, 0::2]  # first halves only
    k = heads_of(linear64(layer.k_proj, x), 4)[:, 0::2]
    v = heads_of(linear64(layer.v_proj, x), 2)
    single = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v
    single = single / torch.sqrt(single.square().mean(-1, keepdim=True) + 1e-5)
    expected = linear64(layer.out_proj, merge64(single * (1 - layer.lambda_init)))
    torch.testing.assert_close(layer(x), expected)


def test_head_dim_must_fit() -> None:
    with pytest.raises(ValueError, match="2 \\* num_heads"):
        build_attention("differential", dim=18, num_heads=4)
