"""Property tests of ``attention``: every backend against the independent float64 oracle.

Hypothesis draws shapes (Lq < Lk, Lq = Lk and Lq > Lk in every property, length 1, head dims
that are not multiples of 8, GQA, MQA), masks and their ``& | ~`` combinations, biases (ALiBi,
learned T5 buckets, dense with gradients), softcap, scale, float32 and float64, and checks
forward and gradients of q, k, v and the bias tensors against ``tests/oracle.py``, which states
every mask and bias from its definition. Short calls run with random small tiles; long calls
(100-300 positions) cross the registered backends' default tiles (blocked: 128 x 128 fused,
bands of 32 rows, 256 x 512 in the pure loop). The oracle itself is checked against a
loop-by-loop transcription of the definition.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import oracle
from attnkit import attention, masks
from attnkit.backends import get_backend, list_backends
from attnkit.backends.base import Backend
from attnkit.backends.blocked import BlockedBackend, TileSizes
from attnkit.functional.math import validate
from conftest import check_against_reference, float64_reference, tolerance
from strategies import RELATIONS, Shape, bias_defs, mask_defs, shapes

# Compiled backends are exercised in test_backends.py on a small fixed case (compilation per
# random shape would take minutes).
FAST_BACKENDS = [n for n in list_backends() if n != "flex"]
#: Long calls cost ~10x a short one: fewer examples, scaled with the profile.
LONG_EXAMPLES = max(4, settings().max_examples // 8)


@st.composite
def calls(draw: st.DrawFn, max_len: int = 9, relation: str | None = None
          ) -> tuple[Shape, torch.dtype, dict[str, Any]]:
    """A random attention call: shape, dtype and keyword options (oracle definitions)."""
    shape = draw(shapes(max_len, relation))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    options: dict[str, Any] = {}
    if draw(st.booleans()):
        options["mask"] = draw(mask_defs(shape.batch, shape.heads, shape.lq, shape.lk))
    if draw(st.booleans()):
        options["bias"] = draw(bias_defs(shape.heads, shape.lq, shape.lk, dtype, shape.batch))
    if draw(st.booleans()):
        options["softcap"] = draw(st.floats(0.5, 20.0))
    if draw(st.booleans()):
        options["scale"] = draw(st.floats(0.05, 2.0))
    return shape, dtype, options


def _spec(q: Tensor, k: Tensor, v: Tensor, options: dict[str, Any]) -> Any:
    return validate(q, k, v, dropout_p=0.0, **{"mask": None, "bias": None, "scale": None,
                                                "softcap": None,
                                                **oracle.attnkit_options(options)})


def _run(backend: Backend, options: dict[str, Any]) -> Any:
    return lambda q, k, v: backend.forward(_spec(q, k, v, options))


def _supported(backend: Backend, q: Tensor, k: Tensor, v: Tensor, options: dict[str, Any],
               grad: bool) -> bool:
    q, k, v = (t.detach().requires_grad_(grad) for t in (q, k, v))
    return not backend.not_supported_reasons(_spec(q, k, v, options))


def _check_backends(candidates: dict[str, Backend], q: Tensor, k: Tensor, v: Tensor,
                    options: dict[str, Any], grad: bool) -> list[str]:
    """Every candidate that supports the call, then ``attention`` itself, against the oracle."""
    ran = []
    for name, backend in candidates.items():
        if not _supported(backend, q, k, v, options, grad):
            continue
        check_against_reference(_run(backend, options), q, k, v, grad=grad, **options)
        ran.append(name)
    built = oracle.attnkit_options(options)
    check_against_reference(lambda q, k, v: attention(q, k, v, **built), q, k, v, grad=grad,
                            **options)
    return ran


@pytest.mark.parametrize("relation", RELATIONS)
@given(data=st.data(), grad=st.booleans(), seed=st.integers(0, 2**31 - 1),
       tiles=st.tuples(st.integers(1, 10), st.integers(1, 10)),
       fused=st.sampled_from([None, False]), contiguous=st.booleans())
def test_every_backend_matches_float64_math(relation: str, data: st.DataObject, grad: bool,
                                            seed: int, tiles: tuple[int, int],
                                            fused: bool | None, contiguous: bool) -> None:
    shape, dtype, options = data.draw(calls(relation=relation))
    q, k, v = shape.tensors(dtype, seed)
    if not contiguous:  # the (B, L, H, D) memory layout that splitting heads produces
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    candidates = {name: get_backend(name) for name in FAST_BACKENDS}
    candidates["blocked(random tiles)"] = BlockedBackend(TileSizes(*tiles), fused=fused)
    ran = _check_backends(candidates, q, k, v, options, grad)
    assert "reference" in ran and "blocked(random tiles)" in ran


@st.composite
def long_masks(draw: st.DrawFn, shape: Shape) -> oracle.MaskDef | None:
    """Masks whose tile plans differ at the default sizes: causal, bands, documents, padding."""
    b, lq, lk = shape.batch, shape.lq, shape.lk
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    parts: list[oracle.MaskDef] = []
    kinds = draw(st.sets(st.sampled_from(["causal", "window", "padding", "document", "sink"]),
                         max_size=3))
    if "causal" in kinds:
        parts.append(oracle.causal(draw(st.none() | st.integers(-40, 40))))
    if "window" in kinds:
        parts.append(oracle.window(draw(st.integers(0, 150)), draw(st.integers(0, 40))))
    if "padding" in kinds:
        parts.append(oracle.padding(torch.randint(0, lk + 1, (b,), generator=g).tolist()))
    if "document" in kinds:  # sorted ids: packed documents of random sizes
        q_ids = torch.randint(0, 4, (b, lq), generator=g).sort(-1).values
        kv_ids = q_ids if lq == lk else torch.randint(0, 4, (b, lk), generator=g).sort(-1).values
        parts.append(oracle.document(q_ids, None if lq == lk else kv_ids))
    if "sink" in kinds and parts:
        parts[-1] = parts[-1] | oracle.sink(draw(st.integers(1, 6)))
    if not parts:
        return None
    mask = parts[0]
    for part in parts[1:]:
        mask = mask & part
    return mask


@pytest.mark.parametrize("relation", RELATIONS)
@settings(max_examples=LONG_EXAMPLES)
@given(data=st.data(), grad=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_long_calls_cross_the_default_tiles(relation: str, data: st.DataObject, grad: bool,
                                            seed: int) -> None:
    """Registered backends at their default tile sizes, lengths 100-300 around the tile edges."""
    shape = data.draw(shapes(relation=relation, long=True))
    options: dict[str, Any] = {}
    mask = data.draw(long_masks(shape))
    if mask is not None:
        options["mask"] = mask
    if data.draw(st.booleans()):  # a bias sends blocked to its pure loop (256 x 512 tiles)
        options["bias"] = data.draw(bias_defs(shape.heads, shape.lq, shape.lk,
                                              batch=shape.batch, allow_sum=False))
    q, k, v = shape.tensors(torch.float32, seed)
    candidates = {name: get_backend(name) for name in FAST_BACKENDS}
    candidates["blocked(pure loop)"] = BlockedBackend(fused=False)
    ran = _check_backends(candidates, q, k, v, options, grad)
    assert "blocked" in ran and "blocked(pure loop)" in ran


@pytest.mark.parametrize("relation", RELATIONS)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1),
       tiles=st.tuples(st.integers(1, 9), st.integers(1, 9)), fused=st.sampled_from([None, False]))
def test_padding_documents_and_windows_combined(relation: str, data: st.DataObject, seed: int,
                                                tiles: tuple[int, int],
                                                fused: bool | None) -> None:
    """Padding & documents & a two-sided window (& causal), small tiles and default tiles."""
    shape = data.draw(shapes(max_len=24, relation=relation))
    g = torch.Generator().manual_seed(seed)
    b, lq, lk = shape.batch, shape.lq, shape.lk
    q_ids = torch.randint(0, 3, (b, lq), generator=g).sort(-1).values
    kv_ids = torch.randint(0, 3, (b, lk), generator=g).sort(-1).values
    valid = torch.rand(b, lk, generator=g) < 0.8
    mask = (oracle.document(q_ids, kv_ids) & oracle.padding(valid)
            & oracle.window(data.draw(st.integers(0, 6)), data.draw(st.integers(0, 3))))
    if data.draw(st.booleans()):
        mask = mask & oracle.causal()
    if data.draw(st.booleans()):
        mask = mask & oracle.padding(torch.randint(0, lk + 1, (b,), generator=g))
    q, k, v = shape.tensors(torch.float32, seed)
    candidates = {name: get_backend(name) for name in FAST_BACKENDS}
    candidates["blocked(small tiles)"] = BlockedBackend(TileSizes(*tiles), fused=fused)
    ran = _check_backends(candidates, q, k, v, {"mask": mask}, grad=True)
    assert "blocked" in ran and "blocked(small tiles)" in ran


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


@pytest.mark.parametrize("relation", RELATIONS)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_the_oracle_matches_the_definition(relation: str, data: st.DataObject, seed: int) -> None:
    shape, _, options = data.draw(calls(max_len=6, relation=relation))
    q, k, v = shape.tensors(torch.float64, seed)
    full = (shape.batch, shape.heads, shape.lq, shape.lk)
    mask, bias = options.get("mask"), options.get("bias")
    allowed = mask.allowed(*full) if mask is not None else torch.ones(full, dtype=torch.bool)
    values = (bias.values(*full).detach() if bias is not None
              else torch.zeros(full, dtype=torch.float64))
    scale = options.get("scale", 1 / math.sqrt(shape.dim))
    want = loop_attention(q, k, v, allowed, values, scale, options.get("softcap"))
    torch.testing.assert_close(float64_reference(q, k, v, **options)[0].detach(), want)


def test_the_oracle_states_the_papers_constants() -> None:
    """ALiBi slopes and T5 buckets from the papers' published examples, not from attnkit."""
    assert oracle.alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]  # 1/2, 1/4, ..., 1/256
    six = oracle.alibi_slopes(6)  # 4 heads' slopes, then every other slope of 8 heads
    assert six == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    relative = torch.tensor([-200, -128, -20, -8, -7, -1, 0, 1, 7, 8, 20, 200])
    # T5 defaults (32 buckets, 128 max distance, bidirectional): 16 per direction, 8 exact.
    got = oracle.t5_bucket(relative, True, 32, 128).tolist()
    assert got == [15, 15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31]
    # causal (decoder) buckets: keys after the query share bucket 0
    assert oracle.t5_bucket(relative, False, 32, 128).tolist() == \
        [31, 31, 17, 8, 7, 1, 0, 0, 0, 0, 0, 0]


def test_default_scale_is_inverse_sqrt_head_dim() -> None:
    q, k, v = torch.randn(1, 2, 4, 7), torch.randn(1, 2, 5, 7), torch.randn(1, 2, 5, 3)
    plain = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(7), -1) @ v
    for backend in FAST_BACKENDS:
        torch.testing.assert_close(attention(q, k, v, backend=backend), plain,
                                   **tolerance(torch.float32))


@pytest.mark.parametrize("relation", RELATIONS)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_gqa_equals_repeated_heads(relation: str, data: st.DataObject, seed: int) -> None:
    shape = data.draw(shapes(relation=relation))
    q, k, v = shape.tensors(torch.float32, seed)
    group = shape.heads // shape.kv_heads
    mask = masks.causal() & masks.sliding_window(3)
    # the oracle takes GQA by its own index rule; here: the heads repeated by hand
    allowed = oracle.causal().allowed(shape.batch, shape.heads, shape.lq, shape.lk) & \
        oracle.window(3).allowed(shape.batch, shape.heads, shape.lq, shape.lk)
    expanded = oracle.attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                allowed=allowed)[0].float()
    for backend in FAST_BACKENDS:
        if not _supported(get_backend(backend), q, k, v, {"mask": mask}, False):
            continue
        torch.testing.assert_close(attention(q, k, v, mask=mask, backend=backend), expanded,
                                   **tolerance(torch.float32))


@pytest.mark.parametrize("relation", RELATIONS)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_masked_keys_do_not_matter(relation: str, data: st.DataObject, seed: int) -> None:
    """Changing keys and values that the mask hides changes nothing, on every backend."""
    shape = data.draw(shapes(relation=relation))
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
    for options in ({}, {"mask": oracle.causal()}, {"mask": oracle.window(0)},
                    {"bias": oracle.alibi(3), "softcap": 2.0}):
        built = oracle.attnkit_options(options)
        for backend in FAST_BACKENDS:
            if _supported(get_backend(backend), q, k, v, options, grad=True):
                check_against_reference(
                    lambda q, k, v, b=backend, o=built: attention(q, k, v, backend=b, **o),
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
    out, weights = float64_reference(q, k, v, mask=oracle.causal())
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


@pytest.mark.parametrize("causal", [False, True])
def test_documents_with_other_key_ids_at_equal_lengths(causal: bool) -> None:
    """Equal lengths but key ids that differ from the query ids (e.g. a cache of another
    packing): not the block-diagonal plan of q_ids, at the default tiles and small ones."""
    g = torch.Generator().manual_seed(7)
    q_ids = torch.tensor([[0] * 40 + [1] * 50 + [2] * 60, [0] * 100 + [1] * 50])
    kv_ids = torch.tensor([[0] * 70 + [1] * 30 + [2] * 50, [0] * 20 + [1] * 130])
    mask = oracle.document(q_ids, kv_ids)
    if causal:
        mask = mask & oracle.causal()
    q = torch.randn(2, 2, 150, 8, generator=g)
    k, v = torch.randn(2, 2, 150, 8, generator=g), torch.randn(2, 2, 150, 8, generator=g)
    candidates = {name: get_backend(name) for name in FAST_BACKENDS}
    candidates["blocked(small tiles)"] = BlockedBackend(TileSizes(16, 24))
    ran = _check_backends(candidates, q, k, v, {"mask": mask}, grad=True)
    assert "blocked" in ran and "blocked(small tiles)" in ran
