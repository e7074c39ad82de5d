"""Linear attention (Katharopoulos et al., 2020) against a float64 transcription."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnkit.functional import masks
from attnkit.layers import RecurrentState, StaticKVCache, build_attention
from kinds_reference import assert_same_gradients, linear64, merge64, padding_case, project64


def phi(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1


def reference(layer, x: torch.Tensor, causal: bool, key_valid: torch.Tensor | None = None
              ) -> torch.Tensor:
    q, k, v = project64(layer, x, layer.layout.num_heads, layer.layout.num_kv_heads)
    sim = phi(q) @ phi(k).transpose(-1, -2)  # (B, H, L, S): phi(q_i) . phi(k_j)
    if causal:
        sim = sim * torch.ones(sim.shape[-2:], dtype=torch.float64).tril()
    if key_valid is not None:
        sim = sim * key_valid[:, None, None, :]
    out = (sim @ v) / sim.sum(-1, keepdim=True)  # eq. 5 / 9
    return linear64(layer.out_proj, merge64(out))


@pytest.mark.parametrize(("causal", "chunk", "kv_heads"), [(False, 4, 4), (True, 4, 2),
                                                           (True, 5, 1), (True, 64, 4)])
def test_linear_matches_paper(causal: bool, chunk: int, kv_heads: int) -> None:
    layer = build_attention("linear", dim=32, num_heads=4, num_kv_heads=kv_heads,
                            chunk=chunk).double()
    x = torch.randn(2, 13, 32, dtype=torch.float64)
    got = layer(x, mask=masks.causal() if causal else None)
    torch.testing.assert_close(got, reference(layer, x, causal))


def test_linear_padding() -> None:
    layer = build_attention("linear", dim=16, num_heads=2, chunk=3).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    lengths = torch.tensor([10, 6])
    valid = (torch.arange(10)[None, :] < lengths[:, None]).double()
    for causal in (False, True):
        mask = masks.padding(lengths) & masks.causal() if causal else masks.padding(lengths)
        torch.testing.assert_close(layer(x, mask=mask), reference(layer, x, causal, valid))


def test_recurrent_decoding_equals_parallel_causal_form() -> None:
    layer = build_attention("linear", dim=32, num_heads=4, num_kv_heads=2, chunk=4).double()
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    parallel = layer(x, mask=masks.causal())
    state = RecurrentState()
    steps = [layer(x[:, i:i + 1], cache=state) for i in range(17)]  # one token at a time
    torch.testing.assert_close(torch.cat(steps, 1), parallel)
    assert state.position == 17 and state.kv is not None
    assert state.kv.shape == (2, 4, 8, 8)  # O(1) in L: (B, H, M, Dv)
    state.reset()
    prompt = layer(x[:, :9], mask=masks.causal(), cache=state)  # prompt, then tokens
    rest = [layer(x[:, i:i + 1], cache=state) for i in range(9, 17)]
    torch.testing.assert_close(torch.cat([prompt, *rest], 1), parallel)


def test_linear_refuses_what_it_cannot_do() -> None:
    layer = build_attention("linear", dim=16, num_heads=2)
    x = torch.randn(1, 4, 16)
    with pytest.raises(ValueError, match="RecurrentState"):
        layer(x, cache=StaticKVCache(8))
    with pytest.raises(ValueError, match="causal"):
        layer(x, cache=RecurrentState())  # several tokens without a causal mask
    with pytest.raises(ValueError, match="only causal"):
        layer(x, mask=masks.sliding_window(2))
    with pytest.raises(ValueError, match="rope"):
        build_attention("linear", dim=16, num_heads=2, rope=True)


@pytest.mark.parametrize("padding", ["none", "lengths", "holes"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_chunked_noncausal_equals_full_map_formula(padding: str, kv_heads: int) -> None:
    """L = 37 in chunks of 8 (last chunk short): output and the gradients of x and of every
    parameter equal the full-map formula (eq. 5) in float64, padded keys included."""
    torch.manual_seed(0)
    length = 37
    layer = build_attention("linear", dim=32, num_heads=4, num_kv_heads=kv_heads,
                            noncausal_chunk=8).double()
    x = torch.randn(2, length, 32, dtype=torch.float64, requires_grad=True)
    valid = padding_case(padding, length)
    mask = None if padding == "none" else masks.padding(valid)
    got = layer(x, mask=mask)
    expected = reference(layer, x, False, None if padding == "none" else valid.double())
    torch.testing.assert_close(got, expected)
    assert_same_gradients(got, expected, [x, *layer.parameters()])


def test_queries_without_a_visible_key_give_zeros_and_finite_gradients() -> None:
    layer = build_attention("linear", dim=16, num_heads=2, noncausal_chunk=4).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64, requires_grad=True)
    heads = layer.attend_heads(x, mask=masks.padding(torch.tensor([10, 0])))
    assert torch.equal(heads[1], torch.zeros_like(heads[1]))
    assert torch.isfinite(heads).all() and heads[0].abs().sum() > 0
    heads.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in layer.parameters())
