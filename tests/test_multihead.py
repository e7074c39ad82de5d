"""MultiHeadAttention against a plain float64 transcription of the layer's definition.

Shape legend: B batch, L query length, S key length, H query heads, Hkv key/value heads,
Dh head dim.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from attnkit import masks
from attnkit.functional.bias import alibi_slopes
from attnkit.layers import AttentionLayer, MultiHeadAttention, build_attention


def rms_norm(x: Tensor, weight: Tensor) -> Tensor:
    """RMSNorm over the last dim with torch's default eps (the dtype's machine epsilon)."""
    eps = torch.finfo(x.dtype).eps
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope_half_split(x: Tensor, start: int = 0, base: float = 10000.0) -> Tensor:
    """Rotate pairs (i, i + Dh/2) of x (B, H, L, Dh) by position * base^(-2i/Dh), as complex."""
    d = x.shape[-1]
    pos = torch.arange(start, start + x.shape[-2], dtype=torch.float64)[:, None]
    angle = pos * base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[..., : d // 2], x[..., d // 2:]) * torch.polar(torch.ones_like(angle),
                                                                         angle)
    return torch.cat([z.real, z.imag], -1)


def transcribe(layer: MultiHeadAttention, x: Tensor, context: Tensor | None = None,
               allowed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The layer's definition in float64 with the layer's weights: (output, weights (B,H,L,S))."""
    lay = layer.layout
    x = x.double()
    src = x if context is None else context.double()

    def linear(m: nn.Linear, t: Tensor) -> Tensor:
        out = t @ m.weight.double().T
        return out + m.bias.double() if m.bias is not None else out

    def heads(t: Tensor, n: int) -> Tensor:  # (B, L, n*Dh) -> (B, n, L, Dh)
        return t.view(t.shape[0], t.shape[1], n, lay.head_dim).transpose(1, 2)

    q = heads(linear(layer.q_proj, x), lay.num_heads)
    k = heads(linear(layer.k_proj, src), lay.num_kv_heads)
    v = heads(linear(layer.v_proj, src), lay.num_kv_heads)
    if layer.q_norm is not None and layer.k_norm is not None:
        q = rms_norm(q, layer.q_norm.weight.double())
        k = rms_norm(k, layer.k_norm.weight.double())
    if layer.rope is not None and context is None:
        q, k = rope_half_split(q), rope_half_split(k)
    group = lay.num_heads // lay.num_kv_heads
    kv_of_head = torch.arange(lay.num_heads) // group
    k, v = k[:, kv_of_head], v[:, kv_of_head]  # (B, H, S, Dh)
    scores = q @ k.transpose(-1, -2) / math.sqrt(lay.head_dim)
    length, keys = q.shape[2], k.shape[2]
    if layer.use_alibi:
        i = torch.arange(length, dtype=torch.float64)[:, None] + (keys - length)
        j = torch.arange(keys, dtype=torch.float64)[None, :]
        scores = scores - alibi_slopes(lay.num_heads).view(-1, 1, 1) * (i - j).abs()
    if layer.softcap is not None:
        scores = layer.softcap * torch.tanh(scores / layer.softcap)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, -1).nan_to_num(0.0)
    out = (weights @ v).transpose(1, 2).reshape(x.shape[0], length, -1)
    return linear(layer.out_proj, out), weights


CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "gqa": {"num_kv_heads": 2},
    "mqa": {"num_kv_heads": 1},
    "qk_norm": {"qk_norm": True},
    "rope": {"rope": True},
    "alibi": {"alibi": True},
    "softcap": {"softcap": 3.0},
    "head_dim_no_bias": {"head_dim": 5, "bias": False},
    "everything": {"num_kv_heads": 2, "qk_norm": True, "rope": True, "alibi": True,
                   "softcap": 5.0},
}


def make_layer(options: dict[str, Any], dim: int = 16, heads: int = 4) -> MultiHeadAttention:
    layer = MultiHeadAttention(dim, heads, **options).double()
    with torch.no_grad():  # non-trivial norm weights
        for norm in (layer.q_norm, layer.k_norm):
            if norm is not None:
                norm.weight.uniform_(0.5, 1.5)
    return layer


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding"])
def test_self_attention_equals_transcription(name: str, mask_kind: str) -> None:
    layer = make_layer(CONFIGS[name])
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    mask = {"none": None, "causal": masks.causal(), "padding": masks.padding([7, 4])}[mask_kind]
    allowed = None if mask is None else mask.dense(7, 7)
    got = layer(x, mask=mask)
    want, _ = transcribe(layer, x, allowed=allowed)
    assert got.shape == (2, 7, 16)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("name", ["plain", "gqa", "mqa", "qk_norm"])
def test_cross_attention_equals_transcription(name: str) -> None:
    layer = make_layer({**CONFIGS[name], "context_dim": 10})
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    context = torch.randn(2, 9, 10, dtype=torch.float64)
    mask = masks.padding([9, 6])
    got = layer(x, context, mask=mask)
    want, _ = transcribe(layer, x, context, allowed=mask.dense(5, 9))
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


def test_rope_is_not_applied_to_cross_attention() -> None:
    with_rope = make_layer({"rope": True})
    without = make_layer({})
    without.load_state_dict(with_rope.state_dict())
    x, context = torch.randn(1, 4, 16, dtype=torch.float64), torch.randn(1, 6, 16,
                                                                         dtype=torch.float64)
    torch.testing.assert_close(with_rope(x, context), without(x, context))
    assert not torch.allclose(with_rope(x), without(x))


def test_float32_forward_and_gradients_match_float64() -> None:
    layer64 = make_layer(CONFIGS["everything"])
    layer32 = MultiHeadAttention(16, 4, **CONFIGS["everything"])
    layer32.load_state_dict({k: v.float() for k, v in layer64.state_dict().items()})
    x64 = torch.randn(2, 6, 16, dtype=torch.float64, requires_grad=True)
    x32 = x64.detach().float().requires_grad_(True)
    out64, out32 = layer64(x64, mask=masks.causal()), layer32(x32, mask=masks.causal())
    torch.testing.assert_close(out32.double(), out64, atol=1e-5, rtol=1e-4)
    cotangent = torch.randn_like(out64)
    out64.backward(cotangent)
    out32.backward(cotangent.float())
    torch.testing.assert_close(x32.grad.double(), x64.grad, atol=1e-5, rtol=1e-4)  # type: ignore[union-attr]
    for (name, p64), p32 in zip(layer64.named_parameters(), layer32.parameters()):
        assert p32.grad is not None and torch.isfinite(p32.grad).all(), name
        torch.testing.assert_close(p32.grad.double(), p64.grad, atol=1e-4, rtol=1e-4,  # type: ignore[arg-type]
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", ["reference", "blocked", "sdpa_dense"])
def test_backend_choice_does_not_change_the_layer(backend: str) -> None:
    auto = make_layer(CONFIGS["gqa"])
    forced = make_layer({**CONFIGS["gqa"], "backend": backend})
    forced.load_state_dict(auto.state_dict())
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    mask = masks.causal() & masks.sliding_window(2)
    torch.testing.assert_close(forced(x, mask=mask), auto(x, mask=mask))


def test_probe_sees_the_weights_whatever_backend_ran() -> None:
    layer = make_layer(CONFIGS["everything"])
    seen: list[Tensor] = []
    layer.probe.register_forward_hook(lambda mod, args, out: seen.append(args[2]()))
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    layer(x, mask=masks.causal())
    _, want = transcribe(layer, x, allowed=masks.causal().dense(5, 5))
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], want, atol=1e-10, rtol=1e-8)


def test_probe_sees_the_values_attended_to_cache_included() -> None:
    """The probe's values are the per-head values (B, Hkv, S, Dh) the queries attend to: with a
    cache, the cached positions' values as well as the new ones (value-norm explanations)."""
    from attnkit.layers import StaticKVCache

    layer = make_layer(CONFIGS["gqa"]).eval()
    seen: list[Tensor] = []
    layer.probe.register_forward_hook(lambda mod, args, out: seen.append(args[1]))
    x = torch.randn(2, 4, 16, dtype=torch.float64)
    cache = StaticKVCache(8)
    layer(x[:, :3], mask=masks.causal(), cache=cache)
    layer(x[:, 3:], cache=cache)
    want = (x @ layer.v_proj.weight.T + layer.v_proj.bias).view(2, 4, 2, 4).transpose(1, 2)
    assert [tuple(v.shape) for v in seen] == [(2, 2, 3, 4), (2, 2, 4, 4)]
    torch.testing.assert_close(seen[0], want[:, :, :3])
    torch.testing.assert_close(seen[1], want)


def test_dropout_only_in_training() -> None:
    layer = make_layer({"dropout": 0.5})
    plain = make_layer({})
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b), "training applies fresh dropout on each call"
    assert not torch.allclose(a, plain(x))
    layer.eval()
    torch.testing.assert_close(layer(x), plain(x))
    torch.testing.assert_close(layer(x), layer(x))
    with_mask = layer(x, mask=masks.sliding_window(2))  # eval: blocked is fine, no dropout
    torch.testing.assert_close(with_mask, plain(x, mask=masks.sliding_window(2)))
    layer.train()
    assert not torch.allclose(layer(x, mask=masks.sliding_window(2)), with_mask)


def test_layout_errors_name_the_values() -> None:
    with pytest.raises(ValueError, match="num_heads must be >= 1, got 0"):
        MultiHeadAttention(16, 0)
    with pytest.raises(ValueError, match=r"num_heads=6 must be a multiple of num_kv_heads=4"):
        MultiHeadAttention(24, 6, num_kv_heads=4)
    with pytest.raises(ValueError, match="dim=10 is not divisible by num_heads=3"):
        MultiHeadAttention(10, 3)
    layer = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match=r"x must be \(batch, length, 16\), got shape \(2, 5, 8\)"):
        layer(torch.randn(2, 5, 8))
    assert MultiHeadAttention(10, 3, head_dim=4).q_proj.out_features == 12


def test_registry_builds_mha() -> None:
    layer = build_attention("mha", dim=16, num_heads=4, num_kv_heads=2)
    assert isinstance(layer, MultiHeadAttention) and isinstance(layer, AttentionLayer)
    assert layer.layout.num_kv_heads == 2 and layer.supports_cache
    assert "heads=4, kv_heads=2" in repr(layer)


def test_fused_and_separate_projections_agree_with_the_transcription() -> None:
    """Self-attention fuses q/k/v into one matmul only when it computes the same thing: not for
    cross-attention with a context of the same width, not when one projection has a bias the
    others lack (a user-replaced module; the value projection, since a key bias would not
    change the attention)."""
    layer = make_layer({})
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    context = torch.randn(2, 9, 16, dtype=torch.float64)  # same width: fusing would be possible
    torch.testing.assert_close(layer(x, context), transcribe(layer, x, context)[0])
    torch.testing.assert_close(layer(x), transcribe(layer, x)[0])
    mixed = make_layer({"bias": False})
    biased = nn.Linear(16, 16, bias=True).double()
    with torch.no_grad():
        biased.weight.copy_(mixed.v_proj.weight)
        biased.bias.normal_()
    mixed.v_proj = biased
    torch.testing.assert_close(mixed(x), transcribe(mixed, x)[0])


def test_the_layer_runs_the_backend_it_was_built_with() -> None:
    """backend= reaches the engine: a forced backend that cannot run the call refuses it."""
    from attnkit.backends import NoBackendError

    x = torch.randn(1, 6, 16, dtype=torch.float64)
    forced = make_layer({"backend": "sdpa"})
    with pytest.raises(NoBackendError, match="backend 'sdpa' cannot run this call"):
        forced(x, mask=masks.sliding_window(2))
    reference = make_layer({"backend": "reference"})
    allowed = masks.sliding_window(2).dense(6, 6)
    torch.testing.assert_close(reference(x, mask=masks.sliding_window(2)),
                               transcribe(reference, x, allowed=allowed)[0])


def test_documented_defaults() -> None:
    """Biased projections, no qk-norm, RoPE, ALiBi or softcap unless asked; one head allowed;
    with bias=False no projection has a bias."""
    layer = MultiHeadAttention(16, 4)
    for proj in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj):
        assert proj.bias is not None
    assert layer.q_norm is None and layer.k_norm is None and layer.rope is None
    assert layer.use_alibi is False and layer.softcap is None and layer.backend == "auto"
    plain = MultiHeadAttention(16, 4, bias=False, softcap=3.0, alibi=True)
    assert all(p.bias is None for p in (plain.q_proj, plain.k_proj, plain.v_proj,
                                        plain.out_proj))
    assert plain.softcap == 3.0 and plain.use_alibi is True
    single = MultiHeadAttention(8, 1).double()
    x = torch.randn(1, 3, 8, dtype=torch.float64)
    torch.testing.assert_close(single(x), transcribe(single, x)[0])
