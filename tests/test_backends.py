"""Every backend on every case: the grid generated from the registry, dispatch, gradcheck.

The grid pairs each registered backend (read from :func:`attnkit.backends.list_backends` when the
tests are collected, so a new backend is tested the day it is registered) with each case below.
A backend that declares support for a case must match float64 plain math, forward and backward;
a backend that declines must refuse with an error that lists its reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

import oracle
from attnkit import attention, dispatch_report, masks
from attnkit import bias as biases
from attnkit.backends import (
    Backend,
    Capabilities,
    DispatchReport,
    NoBackendError,
    get_backend,
    list_backends,
    register_backend,
    select_backend,
    tuning,
)
from attnkit.backends.blocked import BlockedBackend, TileSizes, blocked_attention
from attnkit.backends.dispatch import _REGISTRY
from attnkit.backends.reference import ReferenceBackend
from attnkit.functional.math import AttentionSpec, validate
from conftest import (
    check_against_reference,
    cuda_only,
    float64_reference,
    tolerance,
)

#: Every registered backend, read when the tests are collected: a new backend is tested at once.
backend_names = list_backends()


@dataclass
class Case:
    """One attention call: shapes, dtype and keyword arguments built from fresh random tensors."""

    name: str
    shape: tuple[int, int, int, int, int, int, int]  # B, Hq, Hkv, Lq, Lk, D, Dv
    options: Callable[[], dict[str, Any]] = field(default=dict)  # mask/bias/scale/softcap
    dtype: torch.dtype = torch.float32

    def build(self, grad: bool, device: str = "cpu"
              ) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        b, hq, hkv, lq, lk, d, dv = self.shape
        with torch.device(device):  # tensors inside masks and biases too
            q = torch.randn(b, hq, lq, d, dtype=self.dtype, requires_grad=grad)
            k = torch.randn(b, hkv, lk, d, dtype=self.dtype, requires_grad=grad)
            v = torch.randn(b, hkv, lk, dv, dtype=self.dtype, requires_grad=grad)
            options = self.options()
        if not grad and options.get("bias") is not None:
            for t in options["bias"].leaves:
                t.requires_grad_(False)
        return q, k, v, options


def _learned_buckets(heads: int) -> oracle.BiasDef:
    return oracle.buckets(heads, num_buckets=8, max_distance=12, bidirectional=True)


def _doc_ids() -> Tensor:
    return torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 2, 3, 3]])


CASES = [
    Case("plain", (2, 4, 4, 7, 7, 8, 8)),
    Case("plain_f64_lq_ne_lk", (1, 2, 2, 5, 9, 5, 3), dtype=torch.float64),
    Case("causal", (1, 2, 2, 9, 9, 12, 12), lambda: {"mask": oracle.causal()}),
    Case("causal_bottom_right", (2, 2, 1, 3, 10, 6, 6), lambda: {"mask": oracle.causal()}),
    Case("causal_top_left", (1, 2, 2, 6, 9, 4, 4), lambda: {"mask": oracle.causal(offset=0)}),
    Case("causal_negative_offset", (1, 2, 2, 8, 8, 4, 4),
         lambda: {"mask": oracle.causal(offset=-2)}),  # the first two rows see nothing
    Case("gqa_causal", (2, 6, 2, 8, 8, 5, 7), lambda: {"mask": oracle.causal()}),
    Case("mqa_decode_step", (2, 4, 1, 1, 11, 8, 8), lambda: {"mask": oracle.causal()}),
    Case("sliding_window", (1, 2, 2, 11, 11, 4, 4), lambda: {"mask": oracle.window(3)}),
    Case("window_right_padding", (2, 2, 2, 9, 11, 3, 3),
         lambda: {"mask": oracle.window(2, right=1) & oracle.padding([5, 11])}),
    Case("document_causal", (2, 3, 1, 9, 9, 4, 4),
         lambda: {"mask": oracle.document(_doc_ids()) & oracle.causal()}),
    Case("padding_bool_empty_sequence", (2, 2, 2, 5, 7, 4, 4), lambda: {
        "mask": oracle.padding(torch.tensor([[True, False, True, True, False, True, True],
                                            [False] * 7]))}),
    Case("dense_per_head", (1, 3, 3, 6, 8, 4, 4),
         lambda: {"mask": oracle.dense_mask(torch.rand(1, 3, 6, 8) < 0.5)}),
    Case("streaming_sink", (1, 2, 2, 10, 10, 4, 4),
         lambda: {"mask": oracle.causal() & (oracle.window(2) | oracle.sink(2))}),
    Case("not_causal", (1, 2, 2, 6, 6, 4, 4), lambda: {"mask": ~oracle.causal()}),
    Case("alibi_6_heads", (1, 6, 3, 7, 7, 4, 4),
         lambda: {"mask": oracle.causal(), "bias": oracle.alibi(6)}),
    Case("relative_buckets", (2, 2, 2, 5, 8, 4, 4),
         lambda: {"mask": oracle.causal(), "bias": _learned_buckets(2)}),
    Case("dense_bias_grad", (2, 2, 1, 6, 7, 4, 4),
         lambda: {"bias": oracle.dense_bias(torch.randn(1, 2, 6, 7, requires_grad=True))}),
    Case("softcap_alibi_window", (1, 2, 2, 9, 9, 4, 4), lambda: {
        "mask": oracle.window(4), "bias": oracle.alibi(2), "softcap": 2.0}),
    Case("softcap_only", (1, 2, 2, 5, 5, 4, 4), lambda: {"softcap": 0.5}),
    Case("custom_scale", (1, 2, 2, 4, 6, 4, 9), lambda: {"scale": 0.3}),
    Case("f64_everything", (2, 4, 2, 9, 9, 3, 5), lambda: {
        "mask": oracle.document(_doc_ids()) & oracle.window(3),
        "bias": oracle.dense_bias(torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True))
        + oracle.alibi(4),
        "softcap": 3.0}, dtype=torch.float64),
    Case("bf16_window_alibi", (1, 4, 2, 9, 9, 8, 8), lambda: {
        "mask": oracle.window(3), "bias": oracle.alibi(4)}, dtype=torch.bfloat16),
    Case("f16_causal", (2, 2, 2, 7, 7, 8, 8), lambda: {"mask": oracle.causal()},
         dtype=torch.float16),
    Case("flex_small", (2, 2, 1, 8, 8, 16, 16), lambda: {  # FlexAttention on CUDA needs D >= 16
        "mask": oracle.causal() & oracle.window(3) & oracle.padding([8, 0]),
        "bias": oracle.alibi(2), "softcap": 5.0}),
]
CASES_BY_NAME = {c.name: c for c in CASES}

# Backends too slow to run on every case on CPU, with the cases they do run (and why).
# FlexAttention compiles one kernel per shape and modification (~10-30 s each on 2 CPU cores).
SLOW_BACKENDS: dict[str, set[str]] = {"flex": {"flex_small"}}

# Extra, unregistered configurations worth a grid of their own: tiny tiles make several full,
# partial and empty tiles (and short edge tiles) appear in every case.
# ``fused=False`` keeps blocked's pure PyTorch tile loop tested where the fused path would run.
EXTRA_BACKENDS: dict[str, Backend] = {
    "blocked[3x4]": BlockedBackend(TileSizes(3, 4)),
    "blocked[3x4,pure]": BlockedBackend(TileSizes(3, 4), fused=False),
}


def _grid() -> list[Any]:
    params = []
    for name in ["auto", *backend_names, *EXTRA_BACKENDS]:
        for case in CASES:
            if name in SLOW_BACKENDS and case.name not in SLOW_BACKENDS[name]:
                continue
            marks = [pytest.mark.slow] if name in SLOW_BACKENDS else []
            params.append(pytest.param(name, case, id=f"{name}-{case.name}", marks=marks))
    return params


def _backend(name: str) -> Backend | None:
    return EXTRA_BACKENDS[name] if name in EXTRA_BACKENDS else (
        None if name == "auto" else get_backend(name))


def _run(name: str, options: dict[str, Any]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    options = oracle.attnkit_options(options)
    if name in EXTRA_BACKENDS:
        backend = EXTRA_BACKENDS[name]
        return lambda q, k, v: backend.forward(validate(q, k, v, dropout_p=0.0, **{
            "mask": None, "bias": None, "scale": None, "softcap": None, **options}))
    return lambda q, k, v: attention(q, k, v, backend=name, **options)


def _reasons(name: str, q: Tensor, k: Tensor, v: Tensor, options: dict[str, Any]) -> list[str]:
    options = oracle.attnkit_options(options)
    spec = validate(q, k, v, dropout_p=0.0, **{"mask": None, "bias": None, "scale": None,
                                                "softcap": None, **options})
    backend = _backend(name)
    if backend is None:
        chosen = dispatch_report(q, k, v, **options).chosen
        return [] if chosen else ["auto found no backend"]
    return backend.not_supported_reasons(spec)


def _check_refusal(name: str, q: Tensor, k: Tensor, v: Tensor, options: dict[str, Any],
                   reasons: list[str]) -> None:
    assert name != "auto", f"auto found no backend: {dispatch_report(q, k, v, **options)}"
    assert name in EXTRA_BACKENDS or name in list_backends()
    if name in EXTRA_BACKENDS:
        return
    options = oracle.attnkit_options(options)
    with pytest.raises(NoBackendError) as err:
        attention(q, k, v, backend=name, **options)
    for reason in reasons:
        assert reason in str(err.value)


def _check_case(name: str, case: Case, grad: bool, device: str = "cpu") -> None:
    q, k, v, options = case.build(grad=grad, device=device)
    reasons = _reasons(name, q, k, v, options)
    if reasons:
        _check_refusal(name, q, k, v, options, reasons)
        return
    out = check_against_reference(_run(name, options), q, k, v, grad=grad, **options)
    assert out.device == q.device


@pytest.mark.parametrize("name, case", _grid())
def test_forward_matches_reference(name: str, case: Case) -> None:
    _check_case(name, case, grad=False)


@pytest.mark.parametrize("name, case", _grid())
def test_gradients_match_reference(name: str, case: Case) -> None:
    _check_case(name, case, grad=True)


@pytest.mark.cuda
@cuda_only
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("name, case", _grid())
def test_grid_on_cuda(name: str, case: Case, grad: bool) -> None:
    """The same grid with every tensor (masks' and biases' too) on the GPU."""
    _check_case(name, case, grad=grad, device="cuda")


def test_the_grid_is_not_vacuous() -> None:
    """Every case runs on the reference and blocked backends and on at least two others."""
    for case in CASES:
        q, k, v, options = case.build(grad=True)
        supported = [n for n in backend_names if not _reasons(n, q, k, v, options)]
        assert {"reference", "blocked"} <= set(supported), (case.name, supported)
    forward_support = {n: 0 for n in backend_names}
    for case in CASES:
        q, k, v, options = case.build(grad=False)
        for n in backend_names:
            forward_support[n] += not _reasons(n, q, k, v, options)
    assert all(count > 0 for count in forward_support.values()), forward_support
    q, k, v, options = CASES_BY_NAME["flex_small"].build(grad=False)
    if "flex" in backend_names:
        assert _reasons("flex", q, k, v, options) == [], "flex must run its grid case"


# -- fully masked rows --------------------------------------------------------------------------
FULLY_MASKED = oracle.causal(offset=-2) & oracle.padding([6, 0])  # rows 0-1 of seq 0, all of seq 1


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[cuda_only,
                                                                     pytest.mark.cuda])])
@pytest.mark.parametrize("name", [n for n in ["auto", *backend_names, *EXTRA_BACKENDS]
                                  if n not in SLOW_BACKENDS])
def test_fully_masked_rows_are_zero_with_finite_gradients(name: str, device: str) -> None:
    q = torch.randn(2, 2, 6, 4, requires_grad=True, device=device)
    k = torch.randn(2, 2, 6, 4, requires_grad=True, device=device)
    v = torch.randn(2, 2, 6, 4, requires_grad=True, device=device)
    table = torch.randn(2, 2, 6, 6, requires_grad=True, device=device)
    for options in ({"mask": FULLY_MASKED},
                    {"mask": FULLY_MASKED, "bias": oracle.dense_bias(table), "softcap": 3.0}):
        if _reasons(name, q, k, v, options):
            _check_refusal(name, q, k, v, options, _reasons(name, q, k, v, options))
            continue
        out = _run(name, options)(q, k, v)
        assert torch.equal(out[0, :, :2], torch.zeros_like(out[0, :, :2]))
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        assert torch.isfinite(out).all() and out[0, :, 2:].abs().sum() > 0
        grads = torch.autograd.grad(out, [q, k, v], torch.randn_like(out))
        for g in grads:
            assert torch.isfinite(g).all()
        assert torch.equal(grads[0][1], torch.zeros_like(grads[0][1]))
        check_against_reference(_run(name, options), q, k, v, **options)


# -- gradcheck ----------------------------------------------------------------------------------
class RetensoredBias(biases.Bias):
    """A bias evaluated with replacement tensors, so gradcheck can perturb a learned table."""

    def __init__(self, inner: biases.Bias, tensors: Sequence[Tensor]) -> None:
        self.inner, self.replacement = inner, tuple(tensors)
        self.batch_size, self.num_heads = inner.batch_size, inner.num_heads

    def tensors(self) -> tuple[Tensor, ...]:
        return self.replacement

    def values(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int,
               tensors: Sequence[Tensor] | None = None) -> Tensor:
        used = self.replacement if tensors is None else tensors
        return self.inner.values(b, h, q, k, lq, lk, used)


TINY = TileSizes(block_q=3, block_k=4)


def _blocked_fn(mask: masks.Mask | None, make_bias: Callable[..., Any] | None,
                softcap: float | None, fused: bool | None) -> Callable[..., Tensor]:
    def fn(q: Tensor, k: Tensor, v: Tensor, *bias_tensors: Tensor) -> Tensor:
        bias = make_bias(*bias_tensors) if make_bias is not None else None
        spec = validate(q, k, v, mask=mask, bias=bias, scale=None, softcap=softcap,
                        dropout_p=0.0)
        return blocked_attention(spec, TINY, fused=fused)
    return fn


@pytest.mark.parametrize("variant, fused", [
    ("plain", False), ("plain", None), ("window", False), ("window", None),
    ("alibi_softcap", None), ("dense_bias_masked", None), ("buckets", None)])
def test_blocked_gradcheck(variant: str, fused: bool | None) -> None:
    """Float64 gradcheck with tiles of 3 queries x 4 keys: full, partial, empty and short tiles.

    ``fused=None`` lets blocked use torch's fused kernel where it can (no bias, no softcap);
    ``False`` forces the pure PyTorch tile loop.
    """
    f64 = {"dtype": torch.float64, "requires_grad": True}
    q, k, v = torch.randn(1, 4, 7, 3, **f64), torch.randn(1, 2, 9, 3, **f64), \
        torch.randn(1, 2, 9, 3, **f64)
    extra: tuple[Tensor, ...] = ()
    if variant == "plain":
        fn = _blocked_fn(None, None, None, fused)
    elif variant == "window":
        fn = _blocked_fn(masks.sliding_window(3, right=1) | masks.sink(1), None, None, fused)
    elif variant == "alibi_softcap":
        fn = _blocked_fn(masks.causal(), lambda: biases.alibi(4), 1.5, fused)
    elif variant == "dense_bias_masked":
        extra = (torch.randn(1, 4, 7, 9, **f64),)
        fn = _blocked_fn(masks.causal(offset=-1) & masks.sliding_window(4, offset=-1),
                         biases.dense, 2.0, fused)
    else:
        module = _learned_buckets(4).build().double()
        extra = (module.table.detach().clone().requires_grad_(True),)
        fn = _blocked_fn(masks.causal(), lambda table: RetensoredBias(module, [table]), None,
                         fused)
    # fast_mode checks random projections of the Jacobian: much cheaper, still exact in float64.
    assert torch.autograd.gradcheck(fn, (q, k, v, *extra), eps=1e-6, atol=1e-6, fast_mode=True)


# -- return_weights and dispatch ----------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in backend_names if n not in SLOW_BACKENDS])
def test_return_weights_whatever_backend_ran(name: str) -> None:
    q, k, v = torch.randn(2, 4, 5, 6), torch.randn(2, 2, 8, 6), torch.randn(2, 2, 8, 3)
    for options in ({}, {"mask": oracle.causal()},
                    {"mask": oracle.window(2) & oracle.padding([8, 3]),
                     "bias": oracle.alibi(4), "softcap": 4.0}):
        if _reasons(name, q, k, v, options):
            continue
        out, weights = attention(q, k, v, backend=name, return_weights=True,
                                 **oracle.attnkit_options(options))
        ref_out, ref_weights = float64_reference(q, k, v, **options)
        torch.testing.assert_close(out.double(), ref_out, **tolerance(q.dtype))
        torch.testing.assert_close(weights.double(), ref_weights, **tolerance(q.dtype))
        assert weights.shape == (2, 4, 5, 8)
        sums = weights.sum(-1)  # 1, or 0 for a row that may attend nowhere
        assert (((sums - 1).abs() < 1e-5) | (sums == 0)).all()


def test_return_weights_with_fully_masked_rows() -> None:
    q, k, v = torch.randn(1, 2, 4, 3), torch.randn(1, 2, 4, 3), torch.randn(1, 2, 4, 3)
    out, weights = attention(q, k, v, mask=masks.causal(offset=-1), return_weights=True)
    assert torch.equal(weights[..., 0, :], torch.zeros(1, 2, 4))
    assert torch.equal(out[..., 0, :], torch.zeros(1, 2, 3))


def _qkv(lq: int = 6, lk: int = 6) -> tuple[Tensor, Tensor, Tensor]:
    return torch.randn(1, 2, lq, 4), torch.randn(1, 2, lk, 4), torch.randn(1, 2, lk, 4)


@pytest.mark.parametrize("options, chosen", [
    ({}, "sdpa"),
    ({"mask": masks.causal()}, "sdpa"),
    ({"mask": masks.full()}, "sdpa"),
    ({"mask": masks.sliding_window(2)}, "blocked"),
    ({"mask": masks.causal() & masks.sliding_window(2)}, "blocked"),
    ({"mask": masks.document(torch.tensor([[0, 0, 1, 1, 1, 2]]))}, "blocked"),
    ({"mask": masks.padding([4])}, "blocked"),
    ({"bias": biases.alibi(2)}, "blocked"),
    ({"mask": masks.causal(), "bias": biases.alibi(2)}, "blocked"),
    ({"softcap": 5.0}, "blocked"),
    ({"dropout_p": 0.1}, "sdpa"),
    ({"mask": masks.sliding_window(2), "dropout_p": 0.1}, "sdpa_dense"),
    ({"mask": masks.sliding_window(2), "softcap": 5.0, "dropout_p": 0.1}, "reference"),
])
def test_auto_picks_the_expected_backend(options: dict[str, Any], chosen: str) -> None:
    report = dispatch_report(*_qkv(), **options)
    assert report.chosen == chosen, str(report)
    # select_backend stops at the first fit without the full report: the same choice
    spec = validate(*_qkv(), **{"mask": None, "bias": None, "scale": None, "softcap": None,
                                "dropout_p": 0.0, **options})
    assert select_backend(spec).name == chosen
    text = str(report)
    assert text.startswith(f"chosen: {chosen}")
    for name in backend_names:
        assert name in text
    if chosen != "sdpa":
        assert report.reasons["sdpa"], "sdpa was passed over, so it must say why"


def test_causal_with_unequal_lengths_is_not_sent_to_native_sdpa() -> None:
    """SDPA's is_causal is top-left aligned; attnkit's default causal is bottom-right."""
    report = dispatch_report(*_qkv(3, 7), mask=masks.causal())
    assert report.chosen == "blocked"
    assert any("no native SDPA flag" in r for r in report.reasons["sdpa"])
    assert dispatch_report(*_qkv(3, 7), mask=masks.causal(offset=0)).chosen == "sdpa"


def test_report_lists_reasons() -> None:
    q, k, v = (t.double() for t in _qkv())
    report = dispatch_report(q, k, v, mask=masks.sliding_window(1), softcap=2.0)
    reasons = report.reasons
    assert "softcap not supported" in reasons["sdpa"]
    assert any("no native SDPA flag" in r for r in reasons["sdpa"])
    if "flex" in reasons:
        assert any("allow_in_auto" in r for r in reasons["flex"])
        assert any("dtype float64" in r for r in reasons["flex"])
    assert reasons["blocked"] == [] and report.chosen == "blocked"
    assert "softcap not supported" in str(report)


@pytest.mark.parametrize("backend, options, reason", [
    ("sdpa", {"softcap": 3.0}, "softcap not supported"),
    ("sdpa", {"bias": biases.alibi(2)}, "score bias not supported"),
    ("sdpa", {"mask": masks.sliding_window(2)}, "no native SDPA flag"),
    ("blocked", {"dropout_p": 0.2}, "dropout not supported"),
    ("sdpa_dense", {"softcap": 1.0}, "softcap not supported"),
])
def test_forcing_an_unsupported_backend_lists_reasons(backend: str, options: dict[str, Any],
                                                      reason: str) -> None:
    with pytest.raises(NoBackendError, match=f"backend '{backend}' cannot run this call") as err:
        attention(*_qkv(), backend=backend, **options)
    assert reason in str(err.value)
    assert "backend='auto'" in str(err.value)
    report = dispatch_report(*_qkv(), backend=backend, **options)
    assert report.chosen is None and reason in str(report)


def test_flex_declines_what_it_cannot_do_without_compiling() -> None:
    if "flex" not in backend_names:
        pytest.fail("flex backend is not registered")
    q, k, v = (t.double() for t in _qkv())
    with pytest.raises(NoBackendError, match="dtype float64"):
        attention(q, k, v, backend="flex")
    table = torch.randn(1, 2, 6, 6, requires_grad=True)
    with pytest.raises(NoBackendError, match="gradients into the bias"):
        attention(*_qkv(), bias=biases.dense(table), backend="flex")
    q, k, v = (t.requires_grad_() for t in _qkv())
    with_grad = validate(q, k, v, mask=None, bias=None, scale=None, softcap=None, dropout_p=0.0)
    assert get_backend("flex").not_supported_reasons(with_grad) == [
        "backward not supported on CPU (FlexAttention is forward-only there)"]
    with torch.no_grad():  # the same inputs need no backward here
        assert get_backend("flex").not_supported_reasons(
            validate(q, k, v, mask=None, bias=None, scale=None, softcap=None,
                     dropout_p=0.0)) == []


@pytest.mark.parametrize("qk_dim, v_dim, reasons", [
    (8, 16, ["head dim 8 < 16 not supported on CUDA"]),
    (16, 15, ["head dim 15 < 16 not supported on CUDA"]),
    (16, 16, []),
])
def test_flex_cuda_kernels_need_head_dims_of_16(qk_dim: int, v_dim: int,
                                                 reasons: list[str]) -> None:
    """The rule flex applies on CUDA (Triton's minimum), checked on any device."""
    from attnkit.backends.flex import cuda_head_dim_reasons

    q, k = torch.randn(1, 2, 6, qk_dim), torch.randn(1, 2, 7, qk_dim)
    spec = validate(q, k, torch.randn(1, 2, 7, v_dim), mask=None, bias=None, scale=None,
                    softcap=None, dropout_p=0.0)
    assert cuda_head_dim_reasons(spec) == reasons
    assert get_backend("flex").not_supported_reasons(spec) == []  # on the CPU: no such limit


def test_flex_says_when_torch_has_no_flex_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    from attnkit.backends import flex

    assert flex.flex_available()  # torch >= 2.5
    monkeypatch.setattr(flex, "flex_available", lambda: False)
    spec = validate(*_qkv(), mask=None, bias=None, scale=None, softcap=None, dropout_p=0.0)
    assert get_backend("flex").not_supported_reasons(spec) == [
        f"torch {torch.__version__} has no FlexAttention"]


@pytest.mark.parametrize("options", [
    {"mask": oracle.causal() & oracle.window(3) & oracle.padding([8, 0]),
     "bias": oracle.alibi(4), "softcap": 5.0},  # rows with no key in batch 1
    {"scale": 0.3},
    {"bias": oracle.dense_bias(torch.randn(2, 1, 5, 8))},
    {"mask": oracle.document(torch.tensor([[0] * 3 + [1] * 5, [0] * 8])[:, 3:],
                             torch.tensor([[0] * 3 + [1] * 5, [0] * 8])), "softcap": 2.0},
], ids=["mask-alibi-softcap", "scale", "dense-bias", "documents-softcap"])
def test_flex_forward_uncompiled_matches_the_oracle(options: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """What the flex backend hands to FlexAttention (the block mask from the mask's mask_mod,
    the score_mod of bias and softcap, scale, GQA, zeros for rows with no key), checked with
    flex_attention run eagerly: no compilation per shape. The compiled kernel itself runs in
    the grid's ``flex-flex_small`` case (slow: seconds of compilation)."""
    if "flex" not in backend_names:
        pytest.fail("flex backend is not registered")
    from torch.nn.attention.flex_attention import flex_attention

    from attnkit.backends import flex

    monkeypatch.setattr(flex, "compiled_flex", lambda: flex_attention)
    q, k, v = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)
    built = oracle.attnkit_options(options)
    check_against_reference(lambda q, k, v: attention(q, k, v, backend="flex", **built),
                            q, k, v, grad=False, **options)
    # Inputs that require grad, under no_grad: FlexAttention on CPU must get them detached.
    with torch.no_grad():
        out = attention(*(t.requires_grad_() for t in (q, k, v)), backend="flex", **built)
    torch.testing.assert_close(out, attention(q.detach(), k.detach(), v.detach(),
                                              backend="reference", **built))


def test_unknown_backend_name() -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'fast'; choose one of \['auto', "):
        attention(*_qkv(), backend="fast")


def test_a_newly_registered_backend_is_dispatchable() -> None:
    class PlainOnly(ReferenceBackend):
        name = "test_plain_only"
        capabilities = Capabilities(masks=False, bias=False)

        def forward(self, spec: AttentionSpec) -> Tensor:
            return super().forward(spec)

    register_backend(PlainOnly())
    try:
        assert "test_plain_only" in list_backends()
        q, k, v = _qkv()
        check_against_reference(lambda q, k, v: attention(q, k, v, backend="test_plain_only"),
                                q, k, v)
        with pytest.raises(NoBackendError, match=r"mask causal\(\) not supported"):
            attention(q, k, v, mask=masks.causal(), backend="test_plain_only")
        assert "test_plain_only" in dispatch_report(q, k, v).reasons
    finally:
        _REGISTRY.pop("test_plain_only")


class _DeclinesEverything(Backend):
    """A backend that declares none of the capabilities (and two dtypes, two devices)."""

    name = "test_declines_everything"
    capabilities = Capabilities(dtypes=frozenset({torch.float16, torch.bfloat16}),
                                devices=frozenset({"mps", "cuda"}), masks=False, bias=False,
                                bias_grad=False, softcap=False, dropout=False, backward=False)

    def forward(self, spec: AttentionSpec) -> Tensor:
        raise AssertionError("never run: it declines every call")


def test_each_missing_capability_gives_its_own_reason() -> None:
    """Every declared capability that a call needs and the backend lacks is one reason, in
    words that name the value (dtype and device lists sorted, without the ``torch.`` prefix)."""
    q, k, v = (t.requires_grad_() for t in _qkv())
    table = torch.randn(1, 2, 6, 6, requires_grad=True)
    spec = validate(q, k, v, mask=masks.causal(), bias=biases.dense(table), scale=None,
                    softcap=2.0, dropout_p=0.1)
    assert _DeclinesEverything().not_supported_reasons(spec) == [
        "dtype float32 not in ['bfloat16', 'float16']",
        "device cpu not in ['cuda', 'mps']",
        "mask causal() not supported",
        "score bias not supported",
        "gradients into the bias not supported",
        "softcap not supported",
        "dropout not supported",
        "backward not supported (inputs require grad)",
    ]
    assert ReferenceBackend().not_supported_reasons(spec) == []  # declares everything
    # No gradient wanted into the bias: bias_grad does not matter.
    frozen = validate(q, k, v, mask=None, bias=biases.dense(table.detach()), scale=None,
                      softcap=None, dropout_p=0.0)
    no_bias_grad = type("NoBiasGrad", (ReferenceBackend,),
                        {"capabilities": Capabilities(bias_grad=False)})()
    assert no_bias_grad.not_supported_reasons(frozen) == []
    assert no_bias_grad.not_supported_reasons(spec) == ["gradients into the bias not supported"]


@pytest.mark.parametrize("name, mask, bias", [
    ("sdpa_dense", masks.padding([3, 7]), None),
    ("sdpa_dense", None, biases.alibi(2)),
    ("sdpa_dense", masks.causal() & masks.sliding_window(2), biases.alibi(2)),
    ("reference", masks.causal() & masks.sliding_window(2), biases.alibi(2)),
    # blocked's pure tile loop (a mask's tile plan reads values: not on meta), with softcap
    ("blocked", None, biases.alibi(2)),
    ("blocked", None, biases.dense(torch.zeros(1, 2, 5, 7, device="meta", requires_grad=True))),
])
def test_masks_and_biases_are_built_on_the_inputs_device(name: str, mask: masks.Mask | None,
                                                          bias: biases.Bias | None) -> None:
    """Dense masks, biases and buffers are made on the device of q, k, v, forward and backward.
    torch's meta device stands in for a GPU here: it refuses to mix with CPU tensors, so
    anything left on the CPU fails (the CUDA grid runs the real thing where a GPU is present)."""
    q = torch.randn(2, 2, 5, 4, device="meta", requires_grad=True)
    k = torch.randn(2, 2, 7, 4, device="meta", requires_grad=True)
    v = torch.randn(2, 2, 7, 4, device="meta", requires_grad=True)
    softcap = 2.0 if name == "blocked" else None
    spec = validate(q, k, v, mask=mask, bias=bias, scale=None, softcap=softcap, dropout_p=0.0)
    out = get_backend(name).forward(spec)
    assert out.device.type == "meta" and out.shape == (2, 2, 5, 4)
    leaves = [q, k, v, *(t for t in (bias.tensors() if bias else ()) if t.requires_grad)]
    grads = torch.autograd.grad(out.sum(), leaves)
    assert [g.device.type for g in grads] == ["meta"] * len(leaves)
    assert [g.shape for g in grads] == [t.shape for t in leaves]


def test_a_report_reads_as_one_line_per_backend() -> None:
    report = DispatchReport("blocked", {"sdpa": ["softcap not supported", "no flag"],
                                        "blocked": []})
    assert str(report) == ("chosen: blocked\n  sdpa        softcap not supported; no flag\n"
                           "  blocked     ok")
    assert str(DispatchReport(None)) == "chosen: none"


def test_select_backend_defaults_to_auto_and_names_every_reason() -> None:
    q, k, v = _qkv()
    window = validate(q, k, v, mask=masks.sliding_window(2), bias=None, scale=None,
                      softcap=None, dropout_p=0.0)
    assert select_backend(window).name == "blocked"
    capped = validate(q, k, v, mask=None, bias=biases.alibi(2), scale=None, softcap=3.0,
                      dropout_p=0.0)
    with pytest.raises(NoBackendError) as err:
        select_backend(capped, "sdpa")
    assert str(err.value) == ("backend 'sdpa' cannot run this call: score bias not supported; "
                              "softcap not supported. Use backend='auto' or fix the inputs.")
    # A device no backend takes: auto lists every backend with its reasons.
    meta = [torch.randn(1, 2, 6, 4, device="meta") for _ in range(3)]
    with pytest.raises(NoBackendError) as err:
        attention(*meta)
    message = str(err.value)
    assert message.startswith("no backend supports this call:\nchosen: none\n"), message
    for name in backend_names:
        line = next(line for line in message.splitlines() if line.startswith(f"  {name:<11} "))
        assert line.endswith("device meta not in ['cpu', 'cuda']"), message


def test_auto_skips_a_backend_of_its_order_that_is_not_registered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(_REGISTRY, "flex", raising=False)
    monkeypatch.delitem(_REGISTRY, "blocked")
    report = dispatch_report(*_qkv(), mask=masks.sliding_window(2))
    assert list(report.reasons) == ["sdpa", "sdpa_dense", "reference"]
    assert report.chosen == "sdpa_dense"


def test_auto_on_cuda_prefers_the_dense_mask_and_blocked_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where auto prefers the dense mask (on CUDA, see the next test), ``blocked`` gives the
    rule as its reason and ``sdpa_dense`` runs; a backend with its own reasons keeps them."""
    from attnkit.backends import dispatch

    monkeypatch.setattr(dispatch, "prefers_dense_on_gpu", lambda spec: True)
    with tuning.override(gpu_dense_mask_max_elements=1000):
        report = dispatch_report(*_qkv(), mask=masks.sliding_window(2))
    assert report.chosen == "sdpa_dense", str(report)
    assert report.reasons["blocked"] == [
        "auto: on CUDA sdpa_dense is faster while the dense mask fits (<= 1000 elements); "
        "force backend='blocked' for linear memory"]
    assert report.reasons["sdpa_dense"] == [] and report.reasons["reference"] == []
    dropped = dispatch_report(*_qkv(), mask=masks.sliding_window(2), dropout_p=0.1)
    assert dropped.reasons["blocked"] == ["dropout not supported"]


@pytest.mark.parametrize("mask, bias, copies", [
    (masks.padding([3, 7]), None, 2),  # batch 2
    (None, biases.alibi(2), 2),  # heads 2
    (masks.causal(), biases.alibi(2), 2),  # (1, 1) and (1, 2) broadcast to (1, 2)
    (masks.padding([3, 7]), biases.alibi(2), 4),  # (2, 1) and (1, 2) broadcast to (2, 2)
    (masks.causal(), None, 1),
])
def test_the_dense_mask_rule_counts_copies_times_lq_times_lk(
        mask: masks.Mask | None, bias: biases.Bias | None, copies: int) -> None:
    """auto's CUDA rule, on any device: sdpa_dense while the dense mask, copies x Lq x Lk with
    the batch and head copies that mask and bias broadcast to, has at most
    ``gpu_dense_mask_max_elements`` elements."""
    from attnkit.backends.dispatch import dense_mask_is_small

    q, k, v = (torch.randn(2, 2, length, 4) for length in (5, 7, 7))
    spec = validate(q, k, v, mask=mask, bias=bias, scale=None, softcap=None, dropout_p=0.0)
    size = copies * 5 * 7
    with tuning.override(gpu_dense_mask_max_elements=size):
        assert dense_mask_is_small(spec)
    with tuning.override(gpu_dense_mask_max_elements=size - 1):
        assert not dense_mask_is_small(spec)


def test_the_dense_mask_rule_needs_a_mask_and_sdpa_dense() -> None:
    from attnkit.backends.dispatch import dense_mask_is_small, prefers_dense_on_gpu

    q, k, v = _qkv()
    plain = validate(q, k, v, mask=None, bias=None, scale=None, softcap=None, dropout_p=0.0)
    capped = validate(q, k, v, mask=masks.causal(), bias=None, scale=None, softcap=2.0,
                      dropout_p=0.0)  # sdpa_dense has no softcap
    window = validate(q, k, v, mask=masks.sliding_window(2), bias=None, scale=None,
                      softcap=None, dropout_p=0.0)
    with tuning.override(gpu_dense_mask_max_elements=10**9):
        assert not dense_mask_is_small(plain)
        assert not dense_mask_is_small(capped)
        assert dense_mask_is_small(window)
        assert not prefers_dense_on_gpu(window)  # on the CPU the blocked backend stays


def test_dropout_is_unbiased() -> None:
    """Dropout zeroes weights and rescales the rest: its mean over many draws is the output."""
    draws = 4000  # one batch entry per draw, in a single call
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 2)
    exact = attention(q, k, v, mask=masks.sliding_window(2))
    q, k, v = (t.expand(draws, -1, -1, -1).contiguous() for t in (q, k, v))
    for backend in ("reference", "sdpa_dense"):
        out = attention(q, k, v, mask=masks.sliding_window(2), dropout_p=0.5, backend=backend)
        assert not torch.allclose(out[0], exact[0])
        torch.testing.assert_close(out.mean(0, keepdim=True), exact, atol=0.08, rtol=0.08)


def test_flex_allow_in_auto_lifts_only_the_opt_in_reason(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Auto skips flex until ``allow_in_auto()``; then flex is chosen where it is the first
    backend that can run (here: blocked made to decline), and opting out restores the skip."""
    if "flex" not in backend_names:
        pytest.fail("flex backend is not registered")
    from attnkit.backends import flex

    q, k, v = _qkv(5, 7)
    window = masks.sliding_window(2)
    blocked = get_backend("blocked")
    monkeypatch.setattr(blocked, "not_supported_reasons", lambda spec: ["declined for the test"])
    opt_in = "needs compilation: opt in with attnkit.backends.flex.allow_in_auto()"
    before = dispatch_report(q, k, v, mask=window)
    assert before.reasons["flex"][0] == opt_in and before.chosen == "sdpa_dense"
    spec = validate(q, k, v, mask=window, bias=None, scale=None, softcap=None, dropout_p=0.0)
    assert select_backend(spec).name == "sdpa_dense"  # the call path agrees with the report
    try:
        flex.allow_in_auto()
        allowed = dispatch_report(q, k, v, mask=window)
        assert allowed.reasons["flex"] == [] and allowed.chosen == "flex"
        assert select_backend(spec).name == "flex"
        # still declined for what flex cannot do (backward on CPU), with no opt-in reason
        grad = dispatch_report(q.requires_grad_(), k, v, mask=window)
        assert grad.chosen == "sdpa_dense"
        assert opt_in not in grad.reasons["flex"]
        assert any("backward" in r for r in grad.reasons["flex"])
    finally:
        flex.allow_in_auto(False)
    assert dispatch_report(q.detach(), k, v, mask=window).reasons["flex"][0] == opt_in


def test_dispatch_report_validates_like_attention() -> None:
    """dispatch_report checks every option as attention() does (scale and softcap included)."""
    q, k, v = _qkv()
    for options, message in (({"scale": float("nan")}, "scale must be finite"),
                             ({"softcap": -1.0}, "softcap must be a positive"),
                             ({"dropout_p": 1.0}, r"dropout_p must be in \[0, 1\)")):
        with pytest.raises(ValueError, match=message):
            dispatch_report(q, k, v, **options)
        with pytest.raises(ValueError, match=message):
            attention(q, k, v, **options)


@pytest.mark.parametrize("backend", ["reference", "sdpa_dense"])
def test_dropout_drops_p_and_rescales_by_one_over_keep(backend: str) -> None:
    """With v = identity the output is the dropped weights: each kept weight is the exact weight
    divided by (1 - p), and about a fraction p of them are zero (p = 0.2, not torch's 0.5)."""
    p, keys = 0.2, 16
    q, k = torch.randn(64, 2, 8, 4), torch.randn(64, 2, keys, 4)
    v = torch.eye(keys).expand(64, 2, keys, keys).contiguous()
    _, weights = attention(q, k, v, return_weights=True)
    dropped = attention(q, k, v, dropout_p=p, backend=backend)
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], weights[kept] / (1 - p), rtol=1e-5, atol=1e-6)
    assert abs((~kept).float().mean().item() - p) < 0.02


def test_report_of_a_named_backend_chooses_it_when_it_can_run() -> None:
    """dispatch_report(backend=name) lists only that backend: chosen when it has no reason."""
    q, k, v = _qkv()
    named = dispatch_report(q, k, v, backend="blocked")
    assert named.chosen == "blocked" and named.reasons == {"blocked": []}
    declined = dispatch_report(q.requires_grad_(), k, v, backend="flex")
    assert declined.chosen is None and list(declined.reasons) == ["flex"]
    assert declined.reasons["flex"]
