"""Shared test helpers: the float64 oracle checks, tolerances, hypothesis profiles.

Import the helpers directly (``from conftest import check_against_reference``); pytest puts this
directory on ``sys.path``. Every helper compares against the independent oracle of
``tests/oracle.py`` evaluated in float64 on float64 copies of the inputs: masks, biases, the
default scale and GQA are computed there from their definitions, never by attnkit's own
``validate``, ``dense()`` or reference backend, so a bug in those cannot hide on both sides.

Hypothesis profiles: ``default`` (what ``make test`` runs), ``thorough`` (``make
test-thorough``) and ``mutation`` (derandomized, for ``make mutation``); choose one with
``HYPOTHESIS_PROFILE=thorough``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from torch import Tensor

import oracle
from oracle import BiasDef, MaskDef

# Tests run with the default tuning constants, whatever tuning file this machine has.
os.environ["ATTNKIT_TUNING"] = os.path.join(os.path.dirname(__file__), "no-such-tuning.json")

# torch.testing.assert_close imports torch.distributed.tensor and sympy on its first call (about
# a second). Made once here, when pytest loads this file, that import is inherited by the test
# runs that mutmut forks, one per mutant, from a process that has collected the tests; before,
# every mutant that reached a comparison paid it again.
torch.testing.assert_close(torch.zeros(1), torch.zeros(1))

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
# default: what `make test` runs; sized so the property tests take a few minutes on 2 cores.
settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=_QUIET)
# thorough: `make test-thorough`, for a scheduled run or before a release.
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=_QUIET)
# mutation: `make mutation` reruns the tests once per mutant; the same examples every time, so
# a mutant's verdict does not depend on the draw, fewer of them, and no shrinking (a failure is
# a kill; shrinking it would only cost time).
settings.register_profile("mutation", max_examples=10, deadline=None, derandomize=True,
                          database=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                          suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The test modules read the backend list (``list_backends()``) when they are collected, not this
# file: an exception while pytest imports conftest aborts the whole run (usage error, exit 4), so
# nothing of attnkit's dispatch may run here (mutmut's forced-fail check makes each call raise).

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


def float64_reference(q: Tensor, k: Tensor, v: Tensor, *, mask: MaskDef | None = None,
                      bias: BiasDef | None = None, scale: float | None = None,
                      softcap: float | None = None,
                      bias_leaves: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """The independent oracle (``tests/oracle.py``): (out (B, Hq, Lq, Dv), weights) in float64.

    ``mask`` and ``bias`` are oracle definitions (``oracle.causal()``, ``oracle.alibi(4)``...),
    never attnkit objects: the oracle computes their matrices itself. ``bias_leaves`` replace
    the bias definition's learned tensors (default: float64 casts of them).
    """
    for name, given, kind in (("mask", mask, MaskDef), ("bias", bias, BiasDef)):
        if given is not None and not isinstance(given, kind):
            raise TypeError(f"{name} must be an oracle definition ({kind.__name__}, e.g. "
                            f"oracle.causal()), got {type(given).__name__}: the oracle must not "
                            f"reuse the library's own mask and bias code")
    batch, heads, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    allowed = mask.allowed(batch, heads, lq, lk) if mask is not None else None
    values = bias.values(batch, heads, lq, lk, bias_leaves) if bias is not None else None
    return oracle.attention(q, k, v, allowed=allowed, bias=values, scale=scale, softcap=softcap)


def check_against_reference(run: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor,
                            k: Tensor, v: Tensor, *, mask: MaskDef | None = None,
                            bias: BiasDef | None = None, scale: float | None = None,
                            softcap: float | None = None, grad: bool = True,
                            tol: dict[str, float] | None = None) -> Tensor:
    """Assert ``run(q, k, v)`` equals the independent float64 oracle, forward and backward.

    ``mask`` / ``bias`` are the oracle definitions whose built objects ``run`` uses
    (``oracle.attnkit_options``). Gradients are compared for q, k, v and every bias leaf that
    requires grad, under a random (never all-ones) output cotangent. Returns the output of ``run``.
    """
    tol = tol or tolerance(q.dtype, q.device)
    q, k, v = (t.detach().clone().requires_grad_(grad) for t in (q, k, v))
    leaves = list(bias.leaves) if bias is not None else []
    grad_leaves = [t for t in leaves if grad and t.requires_grad]
    ref_leaves = [t.detach().double().requires_grad_(any(t is g for g in grad_leaves))
                  for t in leaves]
    out = run(q, k, v)
    ref_qkv = [t.detach().double().requires_grad_(grad) for t in (q, k, v)]
    ref_out, _ = float64_reference(*ref_qkv, mask=mask, bias=bias, scale=scale, softcap=softcap,
                                   bias_leaves=ref_leaves)
    assert out.dtype == q.dtype, f"output dtype {out.dtype}, inputs {q.dtype}"
    torch.testing.assert_close(out.double(), ref_out.detach(), **tol)
    if not grad:
        return out
    cotangent = torch.randn(out.shape, dtype=torch.float64, device=out.device)
    got = torch.autograd.grad(out, [q, k, v, *grad_leaves], cotangent.to(out.dtype),
                              allow_unused=True)
    ref_grad_leaves = [r for r in ref_leaves if r.requires_grad]
    want = torch.autograd.grad(ref_out, [*ref_qkv, *ref_grad_leaves], cotangent,
                               allow_unused=True)
    names = ["q", "k", "v", *[f"bias tensor {i}" for i in range(len(grad_leaves))]]
    # A float32 bias table gets a float32 gradient even in a float64 call.
    tols = [tol] * 3 + [tol if t.dtype == torch.float64 else tolerance(t.dtype, t.device)
                        for t in grad_leaves]
    for name, g, w, t in zip(names, got, want, tols):
        w = torch.zeros_like(g) if w is None and g is not None else w  # e.g. no key at all
        assert g is not None and w is not None, f"no gradient reached {name}"
        assert torch.isfinite(g).all(), f"non-finite gradient for {name}"
        torch.testing.assert_close(g.double(), w, **t, msg=lambda m, n=name: f"grad {n}: {m}")
    return out
