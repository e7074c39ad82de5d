"""CUDA paths: every backend on the GPU against the float64 CPU reference. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from attnkit import attention, bias, masks
from attnkit.backends import get_backend, list_backends
from attnkit.functional.math import reference_attention, validate
from attnkit.layers import MultiHeadAttention, StaticKVCache

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CASES = {
    "none": lambda L: None,
    "causal": lambda L: masks.causal(),
    "window": lambda L: masks.sliding_window(37) & masks.causal(),
    "document": lambda L: masks.document(torch.arange(L)[None].repeat(2, 1) // 50),
    "padding": lambda L: masks.padding(torch.tensor([L, L // 3])),
}


@pytest.mark.parametrize("backend", list_backends())
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_backend_on_cuda_matches_float64_reference(backend, case, dtype, with_bias):
    torch.manual_seed(0)
    B, H, Hkv, L, D = 2, 4, 2, 200, 32
    q = torch.randn(B, H, L, D, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(B, Hkv, L, D, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(B, Hkv, L, D, device="cuda", dtype=dtype, requires_grad=True)
    mask = CASES[case](L)
    score_bias = bias.alibi(H) if with_bias else None
    spec = validate(q, k, v, mask=mask, bias=score_bias, scale=None, softcap=None, dropout_p=0.0)
    impl = get_backend(backend)
    if impl.not_supported_reasons(spec):
        pytest.skip("; ".join(impl.not_supported_reasons(spec)))
    out = attention(q, k, v, mask=mask, bias=score_bias, backend=backend)
    grad = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)

    ref_in = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    ref_spec = validate(*ref_in, mask=mask, bias=score_bias, scale=None, softcap=None,
                        dropout_p=0.0)
    ref = reference_attention(ref_spec)[0]
    rdq, rdk, rdv = torch.autograd.grad(ref, ref_in, grad.double().cpu())
    tol = 2e-3 if dtype == torch.float32 else 5e-2
    for got, want in ((out, ref), (dq, rdq), (dk, rdk), (dv, rdv)):
        assert torch.isfinite(got).all()
        err = (got.double().cpu() - want).abs().max().item()
        assert err < tol * max(1.0, want.abs().max().item()), (backend, case, err)


def test_multihead_decoding_on_cuda_equals_full_pass():
    torch.manual_seed(0)
    layer = MultiHeadAttention(64, 4, num_kv_heads=2, rope=True).cuda()
    x = torch.randn(2, 24, 64, device="cuda")
    full = layer(x, mask=masks.causal())
    cache = StaticKVCache(24)
    steps = [layer(x[:, i : i + 1], mask=masks.causal(), cache=cache) for i in range(24)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)
