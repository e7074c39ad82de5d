"""Gated attention (Qiu et al., 2025) against a float64 transcription of its formula."""

from __future__ import annotations

import pytest
import torch

from attnkit.functional import masks
from attnkit.layers import build_attention
from kinds_reference import heads_of, linear64, merge64, project64, softmax_attention64


@pytest.mark.parametrize("gate", ["elementwise", "headwise"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_gated_matches_formula(gate: str, kv_heads: int) -> None:
    layer = build_attention("gated", dim=24, num_heads=4, num_kv_heads=kv_heads,
                            gate=gate).double()
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()
    q, k, v = project64(layer, x, 4, kv_heads)
    heads = softmax_attention64(q, k, v, allowed)  # (B, H, L, Dh)
    g = torch.sigmoid(linear64(layer.gate_proj, x))
    g = heads_of(g, 4) if gate == "elementwise" else g.permute(0, 2, 1)[..., None]
    expected = linear64(layer.out_proj, merge64(heads * g))
    torch.testing.assert_close(layer(x, mask=masks.causal()), expected)


def test_gate_saturated_to_one_is_plain_mha() -> None:
    gated = build_attention("gated", dim=24, num_heads=4, gate="headwise").double()
    mha = build_attention("mha", dim=24, num_heads=4).double()
    mha.load_state_dict({k: v for k, v in gated.state_dict().items()
                         if not k.startswith("gate_proj")})
    with torch.no_grad():
        gated.gate_proj.weight.zero_()
        gated.gate_proj.bias.fill_(60.0)  # sigmoid(60) == 1 in float64
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    torch.testing.assert_close(gated(x), mha(x))


def test_gate_closed_gives_output_bias_only() -> None:
    layer = build_attention("gated", dim=16, num_heads=2).double()
    with torch.no_grad():
        layer.gate_proj.weight.zero_()
        layer.gate_proj.bias.fill_(-60.0)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.out_proj.bias.expand(2, 5, 16))


def test_bad_gate_name() -> None:
    with pytest.raises(ValueError, match="gate must be one of"):
        build_attention("gated", dim=16, num_heads=2, gate="channel")
