"""Property tests of ``attention``: every backend against float64 plain math on random calls.

Hypothesis draws shapes (Lq != Lk, length 1, head dims that are not multiples of 8, GQA, MQA),
masks and their ``& | ~`` combinations, biases (ALiBi, learned T5 buckets, dense with gradients),
softcap, scale, float32 and float64, and checks forward and gradients of q, k, v and the bias
tensors. The oracle itself is checked against a loop-by-loop transcription of the definition.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from attnkit import attention, masks
from attnkit import bias as biases
from attnkit.backends import get_backend
from attnkit.backends.base import Backend
from attnkit.backends.blocked import BlockedBackend, TileSizes
from attnkit.functional.math import reference_attention, validate
from conftest import backend_names, check_against_reference, float64_reference, tolerance
from strategies import Shape, composed_masks, score_biases, shapes

# Compiled backends are exercised in test_backends.py on a small fixed case (compilation per
# random shape would take minutes).
FAST_BACKENDS = [n for n in backend_names if n != "flex"]


@st.composite
def calls(draw: st.DrawFn, max_len: int = 9) -> tuple[Shape, torch.dtype, dict[str, Any]]:
    """A random attention call: shape, dtype and keyword options."""
    shape = draw(shapes(max_len))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    options: dict[str, Any] = {}
    if draw(st.booleans()):
        options["mask"] = draw(composed_masks(shape.batch, shape.heads, shape.lq, shape.lk))[0]
    if draw(st.booleans()):
        options["bias"] = draw(score_biases(shape.batch, shape.heads, shape.lq, shape.lk, dtype))
    if draw(st.booleans()):
        options["softcap"] = draw(st.floats(0.5, 20.0))
    if draw(st.booleans()):
        options["scale"] = draw(st.floats(0.05, 2.0))
    return shape, dtype, options


def _run(backend: Backend, options: dict[str, Any]) -> Any:
    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        spec = validate(q, k, v, dropout_p=0.0, **{"mask": None, "bias": None, "scale": None,
                                                    "softcap": None, **options})
        return backend.forward(spec)
    return run


def _supported(backend: Backend, q: Tensor, k: Tensor, v: Tensor, options: dict[str, Any],
               grad: bool) -> bool:
    q, k, v = (t.detach().requires_grad_(grad) for t in (q, k, v))
    spec = validate(q, k, v, dropout_p=0.0, **{"mask": None, "bias": None, "scale": None,
                                                "softcap": None, **options})
    return not backend.not_supported_reasons(spec)


@given(call=calls(), grad=st.booleans(), seed=st.integers(0, 2**31 - 1),
       tiles=st.tuples(st.integers(1, 10), st.integers(1, 10)),
       fused=st.sampled_from([None, False]), contiguous=st.booleans())
def test_every_backend_matches_float64_math(call: tuple[Shape, torch.dtype, dict[str, Any]],
                                            grad: bool, seed: int, tiles: tuple[int, int],
                                            fused: bool | None, contiguous: bool) -> None:
    shape, dtype, options = call
    q, k, v = shape.tensors(dtype, seed)
    if not contiguous:  # the (B, L, H, D) memory layout that splitting heads produces
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    candidates = {name: get_backend(name) for name in FAST_BACKENDS}
    candidates["blocked(random tiles)"] = BlockedBackend(TileSizes(*tiles), fused=fused)
    ran = []
    for name, backend in candidates.items():
        if not _supported(backend, q, k, v, options, grad):
            continue
        check_against_reference(_run(backend, options), q, k, v, grad=grad, **options)
        ran.append(name)
    assert "reference" in ran and "blocked(random tiles)" in ran
    # and through the public entry point with automatic dispatch
    check_against_reference(lambda q, k, v: attention(q, k, v, **options), q, k, v, grad=grad,
                            **options)


def loop_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor, scale: float,
                   softcap: float | None) -> Tensor:
    """The definition, one (batch, head, query) row at a time, in float64."""
    batch, heads, lq, _ = q.shape
    group = heads // k.shape[1]
    out = torch.zeros(batch, heads, lq, v.shape[-1], dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            kv = h // group  # query head h reads key/value head h // (Hq / Hkv)
            for i in range(lq):
                scores = [float(q[b, h, i] @ k[b, kv, j]) * scale + float(bias[b, h, i, j])
                          for j in range(k.shape[2])]
                if softcap is not None:
                    scores = [softcap * math.tanh(s / softcap) for s in scores]
                keep = [j for j in range(k.shape[2]) if allowed[b, h, i, j]]
                if not keep:
                    continue  # nothing to attend to: the row stays zero
                top = max(scores[j] for j in keep)
                weights = {j: math.exp(scores[j] - top) for j in keep}
                total = sum(weights.values())
                for j, w in weights.items():
                    out[b, h, i] += (w / total) * v[b, kv, j]
    return out


@given(call=calls(max_len=6), seed=st.integers(0, 2**31 - 1))
def test_the_oracle_matches_the_definition(call: tuple[Shape, torch.dtype, dict[str, Any]],
                                           seed: int) -> None:
    shape, _, options = call
    q, k, v = shape.tensors(torch.float64, seed)
    spec = validate(q, k, v, dropout_p=0.0, **{"mask": None, "bias": None, "scale": None,
                                                "softcap": None, **options})
    full = (shape.batch, shape.heads, shape.lq, shape.lk)
    allowed = (spec.mask.dense(shape.lq, shape.lk).expand(full) if spec.mask is not None
               else torch.ones(full, dtype=torch.bool))
    bias = (spec.bias.dense(shape.lq, shape.lk).double().expand(full) if spec.bias is not None
            else torch.zeros(full, dtype=torch.float64))
    want = loop_attention(q, k, v, allowed, bias.detach(), spec.scale, spec.softcap)
    torch.testing.assert_close(reference_attention(spec)[0].detach(), want)


def test_default_scale_is_inverse_sqrt_head_dim() -> None:
    q, k, v = torch.randn(1, 2, 4, 7), torch.randn(1, 2, 5, 7), torch.randn(1, 2, 5, 3)
    plain = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(7), -1) @ v
    for backend in FAST_BACKENDS:
        torch.testing.assert_close(attention(q, k, v, backend=backend), plain,
                                   **tolerance(torch.float32))


@given(shape=shapes(), seed=st.integers(0, 2**31 - 1))
def test_gqa_equals_repeated_heads(shape: Shape, seed: int) -> None:
    q, k, v = shape.tensors(torch.float32, seed)
    group = shape.heads // shape.kv_heads
    mask = masks.causal() & masks.sliding_window(3)
    expanded = attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                         mask=mask, backend="reference")
    for backend in FAST_BACKENDS:
        if not _supported(get_backend(backend), q, k, v, {"mask": mask}, False):
            continue
        torch.testing.assert_close(attention(q, k, v, mask=mask, backend=backend), expanded,
                                   **tolerance(torch.float32))


@given(shape=shapes(), seed=st.integers(0, 2**31 - 1))
def test_masked_keys_do_not_matter(shape: Shape, seed: int) -> None:
    """Changing keys and values that the mask hides changes nothing, on every backend."""
    q, k, v = shape.tensors(torch.float32, seed)
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(shape.batch, shape.lk, generator=g) < 0.6
    hidden = ~valid[:, None, :, None]
    k2 = torch.where(hidden, 100 * torch.randn(k.shape, generator=g), k)
    v2 = torch.where(hidden, 100 * torch.randn(v.shape, generator=g), v)
    mask = masks.padding(valid)
    for backend in FAST_BACKENDS:
        if not _supported(get_backend(backend), q, k, v, {"mask": mask}, False):
            continue
        a = attention(q, k, v, mask=mask, backend=backend)
        b = attention(q, k2, v2, mask=mask, backend=backend)
        torch.testing.assert_close(a, b, **tolerance(torch.float32))


@pytest.mark.parametrize("lq, lk", [(1, 1), (1, 6), (6, 1), (3, 3)])
def test_length_one_edges(lq: int, lk: int) -> None:
    q, k, v = torch.randn(2, 3, lq, 5), torch.randn(2, 3, lk, 5), torch.randn(2, 3, lk, 4)
    for options in ({}, {"mask": masks.causal()}, {"mask": masks.sliding_window(0)},
                    {"bias": biases.alibi(3), "softcap": 2.0}):
        for backend in FAST_BACKENDS:
            if _supported(get_backend(backend), q, k, v, options, grad=True):
                check_against_reference(
                    lambda q, k, v, b=backend, o=options: attention(q, k, v, backend=b, **o),
                    q, k, v, **options)


def test_inputs_are_left_untouched_and_dtype_kept() -> None:
    for dtype in (torch.float32, torch.float64):
        q, k, v = (torch.randn(1, 2, 5, 4, dtype=dtype) for _ in range(3))
        copies = [t.clone() for t in (q, k, v)]
        for backend in FAST_BACKENDS:
            if not _supported(get_backend(backend), q, k, v, {"mask": masks.causal()}, False):
                continue
            out = attention(q, k, v, mask=masks.causal(), backend=backend)
            assert out.dtype == dtype and out.shape == (1, 2, 5, 4)
            for t, c in zip((q, k, v), copies):
                assert torch.equal(t, c)


def test_large_softcap_is_no_softcap_and_small_softcap_flattens() -> None:
    q, k, v = torch.randn(1, 2, 4, 8) * 3, torch.randn(1, 2, 6, 8) * 3, torch.randn(1, 2, 6, 3)
    plain = attention(q, k, v)
    torch.testing.assert_close(attention(q, k, v, softcap=1e6), plain, atol=1e-5, rtol=1e-5)
    _, weights = attention(q, k, v, softcap=1e-4, return_weights=True)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / 6), atol=1e-3, rtol=0)


def test_float64_reference_helper_returns_weights() -> None:
    q, k, v = torch.randn(1, 1, 3, 2), torch.randn(1, 1, 4, 2), torch.randn(1, 1, 4, 2)
    out, weights = float64_reference(q, k, v, mask=masks.causal())
    assert out.dtype == weights.dtype == torch.float64
    assert weights.shape == (1, 1, 3, 4)
    assert torch.equal(weights[0, 0, 0, 2:], torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("lq, lk", [(3, 0), (0, 3), (0, 0)])
def test_empty_lengths(lq: int, lk: int) -> None:
    """No keys: every row is zero (nothing to attend to); no queries: an empty output."""
    q = torch.randn(1, 2, lq, 4, requires_grad=True)
    k = torch.randn(1, 2, lk, 4, requires_grad=True)
    v = torch.randn(1, 2, lk, 3, requires_grad=True)
    runs = [(b, o) for b in FAST_BACKENDS for o in ({}, {"mask": masks.causal()})
            if _supported(get_backend(b), q, k, v, o, grad=True)]
    assert len(runs) >= len(FAST_BACKENDS)
    for backend, options in [("auto", {"mask": masks.causal()}), *runs]:
        out, weights = attention(q, k, v, backend=backend, return_weights=True, **options)
        assert out.shape == (1, 2, lq, 3) and weights.shape == (1, 2, lq, lk)
        assert torch.equal(out, torch.zeros_like(out))
        grads = torch.autograd.grad(out, [q, k, v], torch.randn_like(out), allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)
