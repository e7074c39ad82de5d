"""The chunked non-causal kernel attention and its hand-written backward, against plain float64
math on whole (L, M) feature maps, for every feature map the library ships."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit.backends.kernelized import KernelFeatures, chunked_kernel_attention
from attnkit.layers.linear import EluFeatures
from attnkit.layers.performer import FavorFeatures, orthogonal_gaussian_features

HEAD_DIM = 6


def favor_projection() -> torch.Tensor:
    """The (10, HEAD_DIM) random features both the code under test and the oracle use."""
    return orthogonal_gaussian_features(10, HEAD_DIM, generator=torch.Generator().manual_seed(0))


def make_features(name: str) -> KernelFeatures:
    return EluFeatures() if name == "elu" else FavorFeatures(favor_projection(), 10)


def plain_phi(name: str, x: torch.Tensor) -> torch.Tensor:
    """phi from the papers' formulas, no shifting: elu(x) + 1, or FAVOR+'s positive features
    exp(w.x' - |x'|^2 / 2) / sqrt(M) with x' = x / d^(1/4)."""
    if name == "elu":
        return torch.where(x > 0, x + 1, torch.exp(x))
    w = favor_projection()
    scaled = x / HEAD_DIM ** 0.25
    return torch.exp(scaled @ w.T - scaled.square().sum(-1, keepdim=True) / 2) / math.sqrt(10)


def plain_kernel_attention(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           valid: torch.Tensor | None) -> torch.Tensor:
    """phi(q) (phi(k)^T v) / phi(q) sum phi(k) with whole maps; rows without a key give 0."""
    groups = q.shape[1] // k.shape[1]
    phi_q = plain_phi(name, q)
    phi_k = plain_phi(name, k).repeat_interleave(groups, 1)
    v = v.repeat_interleave(groups, 1)
    if valid is not None:
        phi_k = phi_k * valid[:, None, :, None]
    num = phi_q @ (phi_k.transpose(-1, -2) @ v)
    den = phi_q @ phi_k.sum(2).unsqueeze(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), 0.0)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["elu", "favor"]), lq=st.integers(1, 23), lk=st.integers(1, 23),
       chunk=st.integers(1, 9), kv_heads=st.sampled_from([1, 2]), pad=st.booleans(),
       seed=st.integers(0, 2**16))
def test_matches_whole_map_formula_forward_and_backward(name: str, lq: int, lk: int, chunk: int,
                                                        kv_heads: int, pad: bool,
                                                        seed: int) -> None:
    """Random lengths and chunk sizes (short last chunks, chunks of one row), GQA, padding that
    may cover whole chunks or every key of a sequence; float64 output and the gradients of q,
    k and v through the hand-written backward."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 2, lq, HEAD_DIM, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, kv_heads, lk, HEAD_DIM, generator=g, dtype=torch.float64,
                    requires_grad=True)
    v = torch.randn(2, kv_heads, lk, 3, generator=g, dtype=torch.float64, requires_grad=True)
    valid = torch.rand(2, lk, generator=g) > 0.4 if pad else None
    got = chunked_kernel_attention(q, k, v, make_features(name), chunk=chunk, key_valid=valid)
    expected = plain_kernel_attention(name, q, k, v, None if valid is None else valid.double())
    torch.testing.assert_close(got, expected)
    weight = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * weight).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * weight).sum(), (q, k, v))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("name", ["elu", "favor"])
def test_gradcheck_with_a_sequence_that_has_no_key(name: str) -> None:
    """Finite differences agree (the detached shifts cancel exactly), and a sequence whose keys
    are all padded gives zero output and zero, finite gradients."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 2, 7, HEAD_DIM, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 1, 9, HEAD_DIM, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 1, 9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1] = False
    valid[0, 3:6] = False
    features = make_features(name)

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return chunked_kernel_attention(q, k, v, features, chunk=3, key_valid=valid)

    assert torch.autograd.gradcheck(run, (q, k, v))
    out = run(q, k, v)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and out[0].abs().sum() > 0
    grad_q, grad_k, grad_v = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.equal(grad_q[1], torch.zeros_like(grad_q[1]))
    assert torch.equal(grad_k[1], torch.zeros_like(grad_k[1]))
    assert torch.equal(grad_v[0, :, 3:6], torch.zeros_like(grad_v[0, :, 3:6]))


@pytest.mark.parametrize("name", ["elu", "favor"])
def test_feature_backward_methods_equal_autograd(name: str) -> None:
    """Each map's hand-written derivative against autograd through its own forward code (whose
    row and key maxima are detached: constants in both)."""
    features = make_features(name)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 11, HEAD_DIM, generator=g, dtype=torch.float64, requires_grad=True)
    grad_phi = torch.randn(2, 3, 11, 10 if name == "favor" else HEAD_DIM, generator=g,
                           dtype=torch.float64)
    phi = features.queries(x)
    expected = torch.autograd.grad(phi, x, grad_phi)[0]
    torch.testing.assert_close(features.queries_backward(x.detach(), phi.detach(), grad_phi),
                               expected)
    phi_k = features.keys(x, shift=True)[0]
    expected_k = torch.autograd.grad(phi_k, x, grad_phi)[0]
    torch.testing.assert_close(features.keys_backward(x.detach(), phi_k.detach(), grad_phi),
                               expected_k)


def test_empty_inputs_give_empty_or_zero_outputs() -> None:
    q = torch.randn(1, 2, 4, HEAD_DIM, requires_grad=True)
    k = torch.randn(1, 2, 0, HEAD_DIM, requires_grad=True)
    v = torch.randn(1, 2, 0, 3, requires_grad=True)
    out = chunked_kernel_attention(q, k, v, EluFeatures(), chunk=2)
    assert out.shape == (1, 2, 4, 3) and torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert q.grad is not None and torch.equal(q.grad, torch.zeros_like(q.grad))
    with pytest.raises(ValueError, match="chunk must be >= 1, got 0"):
        chunked_kernel_attention(q, k, v, EluFeatures(), chunk=0)
