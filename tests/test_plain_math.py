"""``attnkit.functional.math`` on its own: the plain-math definition against the float64 oracle.

Fixed cases that reach every line of the module in about a second (the `math` mutation target
runs them once per mutant): the reference backend and ``return_weights`` on each score
modification (default scale from the q/k head dim, explicit scale, bias, softcap, masks with
fully masked rows, GQA, no keys, Lq <, = and > Lk), forward and backward; the helpers
(``safe_softmax``, ``finite_or``, ``expand_kv``, ``check_weights_size``) by value at their
edges; what ``validate`` hands the backends (``AttentionSpec``'s sizes, masks and biases moved
to the inputs' device, with the meta device standing in for a GPU). The input errors of
``validate`` are in ``test_validation.py``; the property tests and the backend grid check the
same definition on random and named cases.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

import oracle
from attnkit import attention, masks
from attnkit import bias as biases
from attnkit.functional.math import (
    MAX_WEIGHTS_ELEMENTS,
    check_weights_size,
    expand_kv,
    finite_or,
    reference_attention,
    safe_softmax,
    validate,
)
from conftest import check_against_reference, float64_reference, tolerance


def _qkv(b: int, hq: int, hkv: int, lq: int, lk: int, d: int, dv: int,
         dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    return (torch.randn(b, hq, lq, d, dtype=dtype), torch.randn(b, hkv, lk, d, dtype=dtype),
            torch.randn(b, hkv, lk, dv, dtype=dtype))


TABLE = torch.randn(2, 1, 4, 6, dtype=torch.float64)  # a dense bias with its own batch
#: (name, (B, Hq, Hkv, Lq, Lk, D, Dv), options as oracle definitions, dtype)
CASES: list[tuple[str, tuple[int, ...], dict[str, Any], torch.dtype]] = [
    # D != Dv: the default scale must come from the q/k head dim
    ("default scale, GQA, Lq < Lk", (2, 4, 2, 3, 7, 5, 3), {}, torch.float64),
    ("explicit scale, MQA, Lq > Lk", (1, 3, 1, 6, 4, 4, 2), {"scale": 0.7}, torch.float64),
    ("causal with fully masked rows", (2, 2, 2, 5, 3, 3, 4),
     {"mask": oracle.causal()}, torch.float64),
    ("padding, a sequence with no key", (2, 2, 1, 4, 5, 3, 3),
     {"mask": oracle.padding([5, 0])}, torch.float64),
    ("alibi and softcap", (1, 4, 4, 5, 5, 6, 2),
     {"bias": oracle.alibi(4), "softcap": 1.5}, torch.float64),
    ("learned dense bias, window, softcap", (2, 2, 1, 4, 6, 3, 3),
     {"bias": oracle.dense_bias(TABLE.clone().requires_grad_()),
      "mask": oracle.window(1, 1), "softcap": 2.0, "scale": 0.4}, torch.float64),
    ("float32, sums of masks and biases", (1, 2, 2, 5, 8, 4, 4),
     {"mask": oracle.causal() | oracle.sink(2),
      "bias": oracle.alibi(2) + oracle.dense_bias(torch.randn(5, 8))}, torch.float32),
]


@pytest.mark.parametrize("name, shape, options, dtype", CASES, ids=[c[0] for c in CASES])
def test_reference_matches_the_oracle(name: str, shape: tuple[int, ...],
                                      options: dict[str, Any], dtype: torch.dtype) -> None:
    """Forward and the gradients of q, k, v and a learned bias, through ``attention``."""
    q, k, v = _qkv(*shape, dtype=dtype)
    built = oracle.attnkit_options(options)

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return attention(q, k, v, backend="reference", **built)

    check_against_reference(run, q, k, v, **options)


@pytest.mark.parametrize("name, shape, options, dtype", CASES, ids=[c[0] for c in CASES])
def test_weights_match_the_oracle(name: str, shape: tuple[int, ...], options: dict[str, Any],
                                  dtype: torch.dtype) -> None:
    """``reference_attention`` returns the output and the weights before dropout; rows with no
    allowed key are zero in both."""
    q, k, v = _qkv(*shape, dtype=dtype)
    spec = validate(q, k, v, dropout_p=0.0, **{"mask": None, "bias": None, "scale": None,
                                                "softcap": None,
                                                **oracle.attnkit_options(options)})
    out, weights = reference_attention(spec)
    ref_out, ref_weights = float64_reference(q, k, v, **options)
    assert out.dtype == weights.dtype == dtype
    assert weights.shape == ref_weights.shape and out.shape == ref_out.shape
    torch.testing.assert_close(weights.double(), ref_weights, **tolerance(dtype))
    torch.testing.assert_close(out.double(), ref_out, **tolerance(dtype))
    _, public = attention(q, k, v, return_weights=True, **oracle.attnkit_options(options))
    torch.testing.assert_close(public.double(), ref_weights, **tolerance(dtype))


def test_no_keys_gives_zero_rows_and_zero_gradients() -> None:
    q, k, v = _qkv(2, 2, 1, 3, 0, 4, 5, dtype=torch.float64)
    q.requires_grad_()
    out, weights = attention(q, k, v, backend="reference", return_weights=True)
    assert out.shape == (2, 2, 3, 5) and weights.shape == (2, 2, 3, 0)
    assert torch.equal(out, torch.zeros_like(out))
    (grad,) = torch.autograd.grad(out.sum(), q, allow_unused=True)
    assert grad is None or torch.equal(grad, torch.zeros_like(q))


def test_scores_far_apart_stay_finite() -> None:
    """The softmax subtracts each row's own maximum: scores 1000 apart give one-hot rows."""
    scores = torch.tensor([[1000.0, 0.0, -5.0], [-800.0, -1000.0, -1000.0]])
    for allowed in (None, torch.ones(2, 3, dtype=torch.bool)):
        weights = safe_softmax(scores, allowed)
        torch.testing.assert_close(weights, torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


def test_safe_softmax_rows_by_value() -> None:
    scores = torch.tensor([[0.5, 2.0, -1.0, 0.0], [3.0, 1.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0]],
                          dtype=torch.float64)
    allowed = torch.tensor([[True, False, True, True], [False] * 4, [True, True, False, False]])
    got = safe_softmax(scores, allowed)
    first = torch.exp(torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64))
    want = torch.zeros(3, 4, dtype=torch.float64)
    want[0, [0, 2, 3]] = first / first.sum()
    want[2, :2] = 0.5
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(safe_softmax(scores, None), torch.softmax(scores, -1))
    # finite gradients through a fully masked row, and none reaching the masked entries
    leaf = scores.clone().requires_grad_()
    (grad,) = torch.autograd.grad((safe_softmax(leaf, allowed) * torch.randn(3, 4)).sum(), leaf)
    assert torch.isfinite(grad).all() and torch.equal(grad[~allowed], torch.zeros(7).double())
    empty = torch.zeros(2, 3, 0)  # no keys: empty weights, with or without a mask
    assert safe_softmax(empty, None).shape == safe_softmax(empty, empty.bool()).shape == (2, 3, 0)


def test_finite_or_replaces_every_non_finite_entry() -> None:
    x = torch.tensor([1.5, -math.inf, math.inf, math.nan, -2.0])
    assert torch.equal(finite_or(x), torch.tensor([1.5, 0.0, 0.0, 0.0, -2.0]))
    assert torch.equal(finite_or(x, math.inf), torch.tensor([1.5, math.inf, math.inf, math.inf,
                                                             -2.0]))


def test_expand_kv_repeats_each_head_for_its_query_group() -> None:
    x = torch.randn(2, 3, 4, 5)
    expanded = expand_kv(x, 6)
    assert expanded.shape == (2, 6, 4, 5)
    for head in range(6):
        assert torch.equal(expanded[:, head], x[:, head // 2])
    assert expand_kv(x, 3) is x  # one query head per key head (MHA) pays for no copy


def test_check_weights_size_at_the_limit() -> None:
    side = math.isqrt(MAX_WEIGHTS_ELEMENTS)
    assert side * side == MAX_WEIGHTS_ELEMENTS == 4096 * 4096
    check_weights_size(side, side)  # exactly at the limit: allowed
    check_weights_size(1, MAX_WEIGHTS_ELEMENTS)
    with pytest.raises(ValueError) as err:
        check_weights_size(side + 1, side)
    assert str(err.value) == (f"the implied attention matrix of {side + 1} x {side} exceeds the "
                              f"{MAX_WEIGHTS_ELEMENTS} element limit; capture shorter inputs")
    with pytest.raises(ValueError, match=r"^topk weights of 3 x 5592406 exceeds"):
        check_weights_size(3, 5592406, "topk weights")


def test_validate_returns_the_normalized_call() -> None:
    q, k, v = _qkv(2, 6, 3, 4, 7, 5, 2)
    spec = validate(q, k, v, mask=None, bias=None, scale=None, softcap=None, dropout_p=0)
    assert (spec.batch, spec.heads, spec.kv_heads, spec.lq, spec.lk) == (2, 6, 3, 4, 7)
    assert spec.q is q and spec.k is k and spec.v is v
    assert spec.mask is None and spec.bias is None and spec.softcap is None
    assert spec.scale == 1.0 / math.sqrt(5) and type(spec.scale) is float
    assert spec.dropout_p == 0.0 and type(spec.dropout_p) is float
    spec = validate(q, k, v, mask=None, bias=None, scale=2, softcap=3.0, dropout_p=0.25)
    assert spec.scale == 2.0 and type(spec.scale) is float
    assert spec.softcap == 3.0 and spec.dropout_p == 0.25


def test_needs_grad_follows_autograd() -> None:
    q, k, v = _qkv(1, 2, 2, 3, 3, 4, 4)
    table = torch.randn(3, 3)
    plain = validate(q, k, v, mask=None, bias=biases.dense(table), scale=None, softcap=None,
                     dropout_p=0.0)
    assert not plain.needs_grad
    for learned in (q, k, v, table):
        learned.requires_grad_()
        spec = validate(q, k, v, mask=None, bias=biases.dense(table), scale=None, softcap=None,
                        dropout_p=0.0)
        assert spec.needs_grad
        with torch.no_grad():
            assert not spec.needs_grad
        learned.requires_grad_(False)
    table.requires_grad_()
    assert validate(q, k, v, mask=None, bias=biases.dense(table), scale=None, softcap=None,
                    dropout_p=0.0).needs_grad
    assert not validate(q, k, v, mask=None, bias=None, scale=None, softcap=None,
                        dropout_p=0.0).needs_grad


def test_masks_and_biases_move_to_the_inputs_device() -> None:
    """On the meta device (a stand-in for a GPU), every tensor of the call must follow q: a
    mask or bias left on the CPU, or built there, cannot meet meta scores."""
    q, k, v = (torch.empty(2, 4, 3, 6, device="meta"), torch.empty(2, 2, 5, 6, device="meta"),
               torch.empty(2, 2, 5, 3, device="meta"))
    spec = validate(q, k, v, mask=masks.dense(torch.rand(3, 5) > 0.5),
                    bias=biases.dense(torch.randn(3, 5)) + biases.alibi(4), scale=None,
                    softcap=None, dropout_p=0.0)
    assert spec.mask is not None and spec.bias is not None
    assert spec.mask.dense(3, 5).device.type == "meta"
    assert [t.device.type for t in spec.bias.tensors()] == ["meta"]
    # masks and biases computed from positions are built on the scores' device
    for mask, bias in ((masks.causal() & masks.padding([5, 2]), biases.alibi(4)),
                       (masks.dense(torch.rand(3, 5) > 0.5), biases.dense(torch.randn(3, 5)))):
        spec = validate(q, k, v, mask=mask, bias=bias, scale=None, softcap=2.0, dropout_p=0.0)
        out, weights = reference_attention(spec)
        assert out.device.type == weights.device.type == "meta"
        assert out.shape == (2, 4, 3, 3) and weights.shape == (2, 4, 3, 5)
