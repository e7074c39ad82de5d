"""One grid over every registered attention kind: the shared contract, tested the same way.

A kind registered with ``register_attention`` is picked up here the day it lands. Options in
``SMALL_OPTIONS`` only shrink kinds to test sizes (or exercise an optional path).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors.torch import load, save

from attnkit.functional import masks
from attnkit.layers import (
    AttentionLayer,
    RecurrentState,
    StaticKVCache,
    build_attention,
    collect_auxiliary_losses,
    list_attention_kinds,
)
from attnkit.layers.kernelized import KernelizedAttention
from cross_reference import CROSS_REFERENCES

KINDS = list(list_attention_kinds())
DIM, HEADS = 32, 4

SMALL_OPTIONS: dict[str, dict[str, Any]] = {
    "adaptive_span": {"max_span": 12, "ramp": 4, "span_init": 0.5},
    "local": {"window": 3},
    "topk": {"top_k": 4, "chunk": 5},
    "performer": {"num_features": 32, "seed": 0},
    "linformer": {"max_length": 24, "projected_length": 6},
    "nystrom": {"num_landmarks": 4, "conv_kernel": 3},
}


def make(kind: str, dtype: torch.dtype = torch.float64, **extra: Any) -> AttentionLayer:
    options = {**SMALL_OPTIONS.get(kind, {}), **extra}
    return build_attention(kind, dim=DIM, num_heads=HEADS, **options).to(dtype)


def test_registry_lists_every_kind_with_a_description() -> None:
    expected = {"mha", "gated", "differential", "adaptive_span", "topk", "ssmax", "local",
                "linear", "performer", "linformer", "nystrom"}
    kinds = list_attention_kinds()
    assert expected <= set(kinds)
    assert all(isinstance(text, str) and len(text) > 10 for text in kinds.values())
    with pytest.raises(ValueError, match="unknown attention kind"):
        build_attention("no-such-kind", dim=DIM, num_heads=HEADS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_kind_contract(kind: str, dtype: torch.dtype) -> None:
    """Forward, backward, padding masks, probe weights, state dict round trip, bad input."""
    layer = make(kind, dtype, num_kv_heads=2)
    x = torch.randn(2, 11, DIM, dtype=dtype, requires_grad=True)

    # forward + backward: right shape, finite, every parameter receives a gradient
    y = layer(x)
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{kind}: parameter {name} gets no gradient"

    # key padding: what sits in padded positions must not change the real positions' outputs
    lengths = torch.tensor([11, 7])
    pad = masks.padding(lengths)
    with torch.no_grad():
        y1 = layer(x, mask=pad)
        x2 = x.detach().clone()
        x2[1, 7:] = torch.randn(4, DIM, dtype=dtype) * 3
        y2 = layer(x2, mask=pad)
    assert torch.isfinite(y1).all()
    torch.testing.assert_close(y1[1, :7], y2[1, :7])
    torch.testing.assert_close(y1[0], y2[0])

    # the probe's weights reproduce the per-head output: out = weights @ values
    captured: dict[str, Any] = {}

    def hook(module: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        captured["out"], captured["values"], captured["weights_fn"] = args

    handle = layer.probe.register_forward_hook(hook)
    with torch.no_grad():
        layer(x, mask=pad)
    handle.remove()
    weights = captured["weights_fn"]()
    out, values = captured["out"], captured["values"]
    assert weights.shape == (2, out.shape[1], 11, 11)
    values = values.repeat_interleave(out.shape[1] // values.shape[1], 1)
    torch.testing.assert_close(weights @ values, out, atol=1e-4 if dtype == torch.float32
                               else 1e-9, rtol=1e-4 if dtype == torch.float32 else 1e-7)

    # state dict round trip (safetensors bytes): a fresh layer reproduces the outputs
    blob = save({k: v.contiguous() for k, v in layer.state_dict().items()})
    torch.manual_seed(99)
    twin = make(kind, dtype, num_kv_heads=2)
    twin.load_state_dict(load(blob))
    with torch.no_grad():
        torch.testing.assert_close(twin(x), layer(x))

    # bad input: a clear ValueError naming the shape
    with pytest.raises(ValueError, match="must be"):
        layer(torch.randn(2, 11, DIM + 1, dtype=dtype))
    with pytest.raises(ValueError, match="must be"):
        layer(torch.randn(11, DIM, dtype=dtype))


@pytest.mark.parametrize("kind", KINDS)
def test_causal_mask_is_honoured_or_refused(kind: str) -> None:
    layer = make(kind)
    x = torch.randn(2, 9, DIM, dtype=torch.float64)
    try:
        y = layer(x, mask=masks.causal())
    except ValueError as err:
        assert "causal" in str(err)
        return
    later = x.clone()
    later[:, 5:] = torch.randn(2, 4, DIM, dtype=torch.float64)
    torch.testing.assert_close(layer(later, mask=masks.causal())[:, :5], y[:, :5])


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_decoding_matches_full_causal_pass_or_is_refused(kind: str) -> None:
    layer = make(kind)
    x = torch.randn(2, 9, DIM, dtype=torch.float64)
    if not layer.supports_cache:
        with pytest.raises(ValueError, match=r"cache|decod"):
            layer(x, cache=StaticKVCache(16))
        return
    cache: Any = RecurrentState() if isinstance(layer, KernelizedAttention) else StaticKVCache(16)
    full = layer(x, mask=masks.causal())
    steps = [layer(x[:, :4], mask=masks.causal(), cache=cache)]
    steps += [layer(x[:, i:i + 1], cache=cache) for i in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full)


@pytest.mark.parametrize("kind", KINDS)
def test_cross_attention_with_context_of_other_length(kind: str) -> None:
    """Queries from x (5 tokens), keys and values from a 13-token context, GQA: equal to the
    kind's definition transcribed in float64 (tests/cross_reference.py)."""
    if kind not in CROSS_REFERENCES:
        pytest.fail(f"kind {kind!r} has no cross-attention definition in "
                    f"tests/cross_reference.py: add one so its values are checked")
    extra = {"conv_kernel": None} if kind == "nystrom" else {}
    layer = make(kind, num_kv_heads=2, **extra)
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    context = torch.randn(2, 13, DIM, dtype=torch.float64)
    y = layer(x, context)
    assert y.shape == x.shape
    torch.testing.assert_close(y, CROSS_REFERENCES[kind](layer, x, context))
    # the context is what is attended: a different one gives a different output
    assert not torch.allclose(layer(x, context.flip(1) + 1), y)


def test_auxiliary_losses_are_collected_from_a_model() -> None:
    model = torch.nn.Sequential(make("mha"), make("adaptive_span"), make("adaptive_span"))
    loss = collect_auxiliary_losses(model)
    assert loss is not None and loss.requires_grad and loss.item() > 0
    loss.backward()
    span = model[1].span_fraction
    assert span.grad is not None and (span.grad > 0).all()
    assert collect_auxiliary_losses(torch.nn.Sequential(make("mha"))) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_kind_on_cuda_matches_cpu(kind: str) -> None:
    """Forward, input gradient and (where supported) decoding on CUDA equal the CPU results."""
    layer = make(kind, torch.float32)
    x = torch.randn(2, 11, DIM, requires_grad=True)
    pad = masks.padding(torch.tensor([11, 6]))
    expected = layer(x, mask=pad)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    gpu = make(kind, torch.float32)
    gpu.load_state_dict(layer.state_dict())
    gpu = gpu.cuda()
    x_gpu = x.detach().cuda().requires_grad_(True)
    got = gpu(x_gpu, mask=masks.padding(torch.tensor([11, 6], device="cuda")))
    (got_grad,) = torch.autograd.grad(got.square().sum(), x_gpu)
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got_grad.cpu(), expected_grad, atol=1e-3, rtol=1e-3)
    if gpu.supports_cache:
        cache: Any = RecurrentState() if isinstance(gpu, KernelizedAttention) \
            else StaticKVCache(11)
        with torch.no_grad():
            xs = x.detach().cuda()
            steps = [gpu(xs[:, i:i + 1], cache=cache) for i in range(11)]
            torch.testing.assert_close(torch.cat(steps, 1), gpu(xs, mask=masks.causal()),
                                       atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_matches_finite_differences(kind: str) -> None:
    """float64 gradients of the whole layer (plain and causal where supported) against
    numerical differentiation (gradcheck's fast mode: random directional derivatives)."""
    options = SMALL_OPTIONS.get(kind, {})
    layer = build_attention(kind, dim=8, num_heads=2, **options).double()  # few inputs: fast
    x = torch.randn(1, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,), fast_mode=True)
    try:
        layer(x, mask=masks.causal())
    except ValueError:
        return  # kinds that refuse causal masks are covered above
    assert torch.autograd.gradcheck(lambda t: layer(t, mask=masks.causal()), (x,), fast_mode=True)
