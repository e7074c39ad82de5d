"""Capture records the true attention weights whatever backend ran, and exact dL/dA."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from attnkit import masks
from attnkit.explain import capture
from attnkit.explain.toy import ToyClassifier, ToySeq2Seq
from attnkit.functional.math import expand_kv
from attnkit.layers import MultiHeadAttention, build_attention, list_attention_kinds

FORCED_BACKENDS = ["sdpa", "blocked", "reference"]


def float64_weights(layer: MultiHeadAttention, x: Tensor, context: Tensor | None = None,
                    causal: bool = False) -> tuple[Tensor, Tensor]:
    """Plain float64 math for the layer: (weights (B, H, Lq, Lk), values (B, H, Lk, Dh))."""
    lay = layer.layout
    src = x if context is None else context

    def heads(t: Tensor, n: int) -> Tensor:
        b, length, _ = t.shape
        return t.view(b, length, n, -1).transpose(1, 2)

    w = {n: p.detach().double() for n, p in layer.named_parameters()}
    q = heads(x.double() @ w["q_proj.weight"].T + w["q_proj.bias"], lay.num_heads)
    k = heads(src.double() @ w["k_proj.weight"].T + w["k_proj.bias"], lay.num_kv_heads)
    v = heads(src.double() @ w["v_proj.weight"].T + w["v_proj.bias"], lay.num_kv_heads)
    group = lay.num_heads // lay.num_kv_heads
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(lay.head_dim)
    if causal:
        lq, lk = scores.shape[-2:]
        allowed = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1), v


@given(backend=st.sampled_from(FORCED_BACKENDS), heads=st.sampled_from([(2, 1), (4, 2), (2, 2)]),
       length=st.integers(1, 9), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_capture_equals_reference_weights(backend: str, heads: tuple[int, int], length: int,
                                          causal: bool, seed: int) -> None:
    torch.manual_seed(seed)
    num_heads, kv_heads = heads
    layer = MultiHeadAttention(12, num_heads, num_kv_heads=kv_heads, backend=backend).eval()
    x = torch.randn(2, length, 12)
    with capture(layer) as cap:
        layer(x, mask=masks.causal() if causal else None)
    want, _ = float64_weights(layer, x, causal=causal)
    assert len(cap) == 1 and not cap[0].cross
    torch.testing.assert_close(cap[0].weights.double(), want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", FORCED_BACKENDS)
def test_capture_cross_attention_flagged_and_exact(backend: str) -> None:
    layer = MultiHeadAttention(8, 2, backend=backend).eval()
    x, ctx = torch.randn(1, 3, 8), torch.randn(1, 5, 8)
    with capture(layer) as cap:
        layer(x, ctx)
    want, _ = float64_weights(layer, x, ctx)
    assert cap[0].cross and cap[0].weights.shape == (1, 2, 3, 5)
    torch.testing.assert_close(cap[0].weights.double(), want, atol=2e-6, rtol=1e-5)


@given(backend=st.sampled_from(FORCED_BACKENDS), heads=st.sampled_from([(2, 1), (2, 2)]),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_weight_gradients_match_autograd_through_explicit_weights(
        backend: str, heads: tuple[int, int], causal: bool, seed: int) -> None:
    """dL/dA from the probe equals autograd's gradient of an explicit A @ V model (float64)."""
    torch.manual_seed(seed)
    layer = MultiHeadAttention(8, heads[0], num_kv_heads=heads[1], backend=backend).eval()
    x = torch.randn(2, 5, 8)
    cotangent = torch.randn(2, 5, 8)
    with capture(layer, gradients=True) as cap:
        (layer(x, mask=masks.causal() if causal else None) * cotangent).sum().backward()
    weights, v = float64_weights(layer, x, causal=causal)
    weights.requires_grad_(True)
    out = (weights @ v).transpose(1, 2).reshape(2, 5, -1)  # (B, L, H*Dh)
    y = out @ layer.out_proj.weight.detach().double().T + layer.out_proj.bias.detach().double()
    (y * cotangent.double()).sum().backward()
    assert weights.grad is not None
    torch.testing.assert_close(cap[0].dense_grad().double(), weights.grad, atol=1e-5, rtol=1e-4)


def test_head_selection_fp16_and_top_k_storage() -> None:
    layer = MultiHeadAttention(8, 4).eval()
    x = torch.randn(1, 10, 8)
    with capture(layer, heads=[3, 1], dtype=torch.float16, top_k=3, gradients=True) as cap:
        layer(x).square().sum().backward()
    full, _ = float64_weights(layer, x)
    record = cap[0]
    assert record.heads == (3, 1) and record.weights.dtype == torch.float16
    assert record.weights.shape == (1, 2, 10, 3) and cap.storage == (
        "float16, top-3 entries per query row")
    dense = record.dense_weights().double()
    chosen = full[:, [3, 1]]
    top_values, top_idx = chosen.topk(3, dim=-1)
    want = torch.zeros_like(chosen).scatter(-1, top_idx, top_values)
    torch.testing.assert_close(dense, want, atol=2e-3, rtol=2e-3)
    assert record.dense_grad().shape == (1, 2, 10, 10)
    assert int((record.dense_grad() != 0).sum(-1).max()) <= 3


def test_layer_selection_by_index_and_name_and_errors() -> None:
    model = ToyClassifier(depth=3).eval()
    tokens = torch.randint(0, 20, (2, 6))
    with capture(model, layers=[0, "blocks.2.attn"]) as cap:
        model(tokens)
    assert cap.names == ["blocks.0.attn", "blocks.2.attn"]
    assert cap["blocks.2.attn"].weights.shape == (2, 2, 7, 7)
    with pytest.raises(ValueError, match="out of range"), capture(model, layers=[7]):
        pass
    with pytest.raises(ValueError, match="no attention layer named"), capture(model,
                                                                               layers=["x"]):
        pass
    with pytest.raises(ValueError, match="do not exist"), capture(model, heads=[5]):
        model(tokens)
    with pytest.raises(ValueError, match="no attnkit attention layers"), capture(
            torch.nn.Linear(2, 2)):
        pass


def test_seq2seq_records_self_and_cross_in_call_order() -> None:
    model = ToySeq2Seq(depth=2).eval()
    with capture(model) as cap:
        model(torch.randint(0, 20, (1, 5)), torch.randint(0, 20, (1, 4)))
    assert [r.cross for r in cap] == [False, False, False, True, False, True]
    assert [r.weights.shape[-2:] for r in cap.cross_attention()] == [(4, 5), (4, 5)]
    decoder_self = cap["decoder.0.attn"].weights
    assert torch.all(decoder_self.triu(1) == 0)  # causal decoder


def test_hooks_removed_and_model_output_unchanged() -> None:
    model = ToyClassifier().eval()
    tokens = torch.randint(0, 20, (2, 6))
    before = model(tokens)
    with capture(model) as cap:
        during = model(tokens)
    model(tokens)
    assert len(cap) == 2  # the call after the block was not recorded
    torch.testing.assert_close(before, during)


# Options a kind needs beyond dim and heads (a kind missing here is built without any).
KIND_OPTIONS = {"linformer": {"max_length": 16}}


@pytest.mark.parametrize("kind", sorted(list_attention_kinds()))
def test_every_kind_captures_the_weights_that_produced_its_output(kind: str) -> None:
    """For every registered kind, captured weights W satisfy out_heads == W @ V."""
    layer = build_attention(kind, dim=16, num_heads=2, **KIND_OPTIONS.get(kind, {})).eval()
    seen: list[tuple[Tensor, Tensor]] = []
    layer.probe.register_forward_hook(lambda m, args, out: seen.append((args[0], args[1])))
    x = torch.randn(2, 12, 16)
    with capture(layer, gradients=True) as cap:
        (layer(x) * torch.randn(2, 12, 16)).sum().backward()
    (out, values), record = seen[0], cap[0]
    weights = record.dense_weights()
    assert weights.shape == (2, 2, 12, 12) and torch.isfinite(weights).all()
    torch.testing.assert_close(weights @ expand_kv(values.detach(), 2), out.detach(),
                               atol=1e-5, rtol=1e-4)
    assert record.grad is not None and torch.isfinite(record.dense_grad()).all()


def test_implied_weights_above_the_size_limit_raise_naming_the_layer() -> None:
    model = torch.nn.Sequential()
    model.add_module("linear_attn", build_attention("linear", dim=8, num_heads=1))
    with pytest.raises(ValueError, match=r"capturing layer 'linear_attn'.*limit"), \
            capture(model):
        model(torch.randn(1, 4100, 8))


def test_capture_never_changes_the_backend_that_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same backends are chosen with and without capture (no slow path is forced)."""
    from attnkit.backends import dispatch

    chosen: list[str] = []
    original = dispatch.select_backend

    def spy(spec, backend="auto"):  # type: ignore[no-untyped-def]
        picked = original(spec, backend)
        chosen.append(picked.name)
        return picked

    monkeypatch.setattr(dispatch, "select_backend", spy)
    model = ToyClassifier(depth=2).eval()
    tokens = torch.randint(0, 20, (2, 6))
    model(tokens)
    plain = list(chosen)
    chosen.clear()
    with capture(model, gradients=True) as cap:
        model(tokens).sum().backward()
    assert len(cap) == 2 and plain and chosen == plain
    assert "reference" not in plain  # a fused backend really ran
