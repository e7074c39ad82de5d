"""Shared test helpers: the float64 plain-math oracle, tolerances, the backend list, hypothesis.

Import the helpers directly (``from conftest import check_against_reference``); pytest puts this
directory on ``sys.path``. Every helper compares against :func:`reference_attention` evaluated
in float64 on float64 copies of the inputs, so a backend is judged against exact math, not
against another fast path.

Hypothesis profiles: ``attnkit`` (default, small and fast) and ``thorough`` (many examples);
choose with ``HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import Tensor

from attnkit.backends import list_backends
from attnkit.functional.bias import Bias
from attnkit.functional.masks import Mask
from attnkit.functional.math import reference_attention, validate

# Tests run with the default tuning constants, whatever tuning file this machine has.
os.environ["ATTNKIT_TUNING"] = os.path.join(os.path.dirname(__file__), "no-such-tuning.json")

settings.register_profile(
    "attnkit", max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "thorough", max_examples=400, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "attnkit"))

#: Every registered backend, read when the tests are collected: a new backend is tested at once.
backend_names: list[str] = list_backends()

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Same random tensors on every run: a failure can be reproduced by rerunning the test."""
    torch.manual_seed(1234)


def tolerance(dtype: torch.dtype, device: str | torch.device = "cpu") -> dict[str, float]:
    """``torch.testing.assert_close`` tolerances for comparing ``dtype`` results with float64.

    GPU kernels reorder sums more freely (and may use TF32 inside fused kernels): looser there.
    """
    on_gpu = torch.device(device).type != "cpu"
    if dtype == torch.float64:
        return {"atol": 1e-9, "rtol": 1e-7}
    if dtype == torch.float32:
        return {"atol": 2e-3, "rtol": 2e-3} if on_gpu else {"atol": 3e-5, "rtol": 3e-4}
    return {"atol": 2e-2, "rtol": 2e-2}  # half precisions


class RetensoredBias(Bias):
    """A bias evaluated with replacement tensors (e.g. float64 leaves for the oracle)."""

    def __init__(self, inner: Bias, tensors: Sequence[Tensor]) -> None:
        self.inner, self.replacement = inner, tuple(tensors)
        self.batch_size, self.num_heads = inner.batch_size, inner.num_heads

    def tensors(self) -> tuple[Tensor, ...]:
        return self.replacement

    def values(self, b: Tensor, h: Tensor, q: Tensor, k: Tensor, lq: int, lk: int,
               tensors: Sequence[Tensor] | None = None) -> Tensor:
        used = self.replacement if tensors is None else tensors
        return self.inner.values(b, h, q, k, lq, lk, used).to(torch.float64)

    def __repr__(self) -> str:
        return repr(self.inner)


def float64_reference(q: Tensor, k: Tensor, v: Tensor, *, mask: Mask | None = None,
                      bias: Bias | None = None, scale: float | None = None,
                      softcap: float | None = None,
                      bias_tensors: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Plain-math (out (B, Hq, Lq, Dv), weights (B, Hq, Lq, Lk)) in float64.

    ``q``, ``k``, ``v`` are cast with ``.double()`` (gradients flow back to them);
    ``bias_tensors`` replace ``bias.tensors()`` (default: float64 casts of them).
    """
    if bias is not None:
        if bias_tensors is None:
            bias_tensors = [t.double() for t in bias.tensors()]
        bias = RetensoredBias(bias, bias_tensors)
    spec = validate(q.double(), k.double(), v.double(), mask=mask, bias=bias, scale=scale,
                    softcap=softcap, dropout_p=0.0)
    return reference_attention(spec)


def check_against_reference(run: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor,
                            k: Tensor, v: Tensor, *, mask: Mask | None = None,
                            bias: Bias | None = None, scale: float | None = None,
                            softcap: float | None = None, grad: bool = True,
                            tol: dict[str, float] | None = None) -> Tensor:
    """Assert ``run(q, k, v)`` equals float64 plain math, forward and (if ``grad``) backward.

    Gradients are compared for q, k, v and every bias tensor that requires grad, under a random
    (never all-ones) output cotangent. ``bias`` must be the object ``run`` uses. Returns the
    output of ``run``.
    """
    tol = tol or tolerance(q.dtype, q.device)
    q, k, v = (t.detach().clone().requires_grad_(grad) for t in (q, k, v))
    bias_tensors = list(bias.tensors()) if bias is not None else []
    bias_leaves = [t for t in bias_tensors if grad and t.requires_grad]
    ref_bias = [t.detach().double().requires_grad_(any(t is b for b in bias_leaves))
                for t in bias_tensors]
    out = run(q, k, v)
    ref_qkv = [t.detach().double().requires_grad_(grad) for t in (q, k, v)]
    ref_out, _ = float64_reference(*ref_qkv, mask=mask, bias=bias, scale=scale, softcap=softcap,
                                   bias_tensors=ref_bias)
    assert out.dtype == q.dtype, f"output dtype {out.dtype}, inputs {q.dtype}"
    torch.testing.assert_close(out.double(), ref_out.detach(), **tol)
    if not grad:
        return out
    cotangent = torch.randn(out.shape, dtype=torch.float64, device=out.device)
    got = torch.autograd.grad(out, [q, k, v, *bias_leaves], cotangent.to(out.dtype),
                              allow_unused=True)
    ref_bias_leaves = [r for r, t in zip(ref_bias, bias_tensors) if r.requires_grad]
    want = torch.autograd.grad(ref_out, [*ref_qkv, *ref_bias_leaves], cotangent,
                               allow_unused=True)
    names = ["q", "k", "v", *[f"bias tensor {i}" for i in range(len(bias_leaves))]]
    # A float32 bias table gets a float32 gradient even in a float64 call.
    tols = [tol] * 3 + [tol if t.dtype == torch.float64 else tolerance(t.dtype, t.device)
                        for t in bias_leaves]
    for name, g, w, t in zip(names, got, want, tols):
        assert g is not None and w is not None, f"no gradient reached {name}"
        assert torch.isfinite(g).all(), f"non-finite gradient for {name}"
        torch.testing.assert_close(g.double(), w, **t, msg=lambda m, n=name: f"grad {n}: {m}")
    return out
