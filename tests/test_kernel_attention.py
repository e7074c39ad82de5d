"""The kernelized backend's entry points against float64 formulas on whole feature maps: the
causal chunked form and its decoding state, the implied attention weights, the chunked reading
of the non-causal path, and the argument errors."""

from __future__ import annotations

import pytest
import torch

from attnkit.backends.kernelized import (
    KernelFeatures,
    causal_kernel_attention,
    chunked_kernel_attention,
    kernel_attention,
    kernel_attention_weights,
    kernel_feature_maps,
)
from attnkit.functional.math import MAX_WEIGHTS_ELEMENTS
from attnkit.layers.linear import EluFeatures
from attnkit.layers.performer import FavorFeatures, orthogonal_gaussian_features


def positive(*shape: int, seed: int) -> torch.Tensor:
    """Random positive features (a feature map's output), float64."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64) + 0.05


def causal_formula(phi_q, phi_k, v, offset: int = 0):
    """sum_{j <= i + offset} phi_q_i . phi_k_j v_j / sum_{j <= i + offset} phi_q_i . phi_k_j."""
    scores = phi_q @ phi_k.transpose(-1, -2)
    lq, lk = scores.shape[-2:]
    keep = torch.ones(lq, lk, dtype=torch.bool).tril(offset)
    scores = scores * keep
    den = scores.sum(-1, keepdim=True)
    return torch.where(den > 0, scores / den.clamp_min(1e-300), 0.0) @ v


def elu1(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x + 1, torch.exp(x))


def test_causal_form_default_chunk_and_state() -> None:
    """Length 150 crosses the default chunk (the tuning's kernel_causal_chunk, 128); the final
    state is the sums over every key, and continuing from the state of a prefix gives the
    rows of the whole sequence."""
    phi_q, phi_k = positive(2, 3, 150, 5, seed=1), positive(2, 3, 150, 5, seed=2)
    v = torch.randn(2, 3, 150, 4, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    out, kv, normalizer = causal_kernel_attention(phi_q, phi_k, v)
    torch.testing.assert_close(out, causal_formula(phi_q, phi_k, v))
    torch.testing.assert_close(kv, phi_k.transpose(-1, -2) @ v)
    torch.testing.assert_close(normalizer, phi_k.sum(2))
    head, _, _ = causal_kernel_attention(phi_q[:, :, :100], phi_k[:, :, :100], v[:, :, :100],
                                         chunk=7)
    _, kv0, normalizer0 = causal_kernel_attention(phi_q[:, :, :100], phi_k[:, :, :100],
                                                  v[:, :, :100], chunk=7)
    tail, kv_end, _ = causal_kernel_attention(phi_q[:, :, 100:], phi_k[:, :, 100:],
                                              v[:, :, 100:], chunk=16, kv0=kv0,
                                              normalizer0=normalizer0)
    torch.testing.assert_close(torch.cat([head, tail], 2), out)
    torch.testing.assert_close(kv_end, kv)
    with pytest.raises(ValueError, match="kv0 and normalizer0 together, got kv0 only"):
        causal_kernel_attention(phi_q, phi_k, v, chunk=8, kv0=kv0)
    with pytest.raises(ValueError, match="kv0 and normalizer0 together, got normalizer0 only"):
        causal_kernel_attention(phi_q, phi_k, v, chunk=8, normalizer0=normalizer0)


def test_chunk_and_state_errors_name_the_values() -> None:
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    phi = EluFeatures()
    for causal in (True, False):
        with pytest.raises(ValueError, match="chunk must be >= 1, got 0"):
            kernel_attention(q, k, v, phi, causal=causal, chunk=0)
    with pytest.raises(ValueError, match="chunk must be >= 1, got -2"):
        causal_kernel_attention(q, k, v, chunk=-2)
    state = (torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError,
                       match=r"^a decoding state is causal: pass causal=True with state$"):
        kernel_attention(q, k, v, phi, causal=False, chunk=4, state=state)


def test_causal_kernel_attention_with_padding_and_gqa() -> None:
    """Padded keys have zero features: no query reads them; a query whose visible keys are
    all padded gets zeros. Two query heads share each key/value head."""
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 4, 9, 3, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 9, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 9, 5, generator=g, dtype=torch.float64)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[0, :3] = False  # the first three queries of sequence 0 see no key
    valid[1, 5:] = False
    out, (kv, normalizer) = kernel_attention(q, k, v, EluFeatures(), causal=True, chunk=4,
                                             key_valid=valid)
    phi_k = (elu1(k) * valid[:, None, :, None]).repeat_interleave(2, 1)
    want = causal_formula(elu1(q), phi_k, v.repeat_interleave(2, 1))
    torch.testing.assert_close(out, want)
    assert torch.equal(out[0, :, :3], torch.zeros_like(out[0, :, :3]))
    torch.testing.assert_close(normalizer, phi_k.sum(2))
    torch.testing.assert_close(kv, phi_k.transpose(-1, -2) @ v.repeat_interleave(2, 1))


@pytest.mark.parametrize("lq, lk", [(6, 6), (4, 7), (7, 4)])
def test_implied_weights_match_the_formula(lq: int, lk: int) -> None:
    """phi(q_i).phi(k_j) / sum_j' phi(q_i).phi(k_j'); causal bottom-right aligned (more queries
    than keys: the first queries see nothing and get zero rows)."""
    phi_q, phi_k = positive(2, 3, lq, 5, seed=lq), positive(2, 3, lk, 5, seed=lk + 10)
    eye = torch.eye(lk, dtype=torch.float64).expand(2, 3, lk, lk)
    for causal in (False, True):
        want = causal_formula(phi_q, phi_k, eye, lk - lq if causal else lk)
        got = kernel_attention_weights(phi_q, phi_k, causal)
        torch.testing.assert_close(got, want)
    blind = got[..., :max(0, lq - lk), :]  # causal rows before the first key
    assert torch.equal(blind, torch.zeros_like(blind))


def test_implied_weights_refuse_a_matrix_over_the_limit() -> None:
    side = int(MAX_WEIGHTS_ELEMENTS ** 0.5)
    phi_q, phi_k = torch.ones(1, 1, side + 1, 1), torch.ones(1, 1, side + 4, 1)
    for causal in (True, False):
        with pytest.raises(ValueError, match=f"of {side + 1} x {side + 4} exceeds"):
            kernel_attention_weights(phi_q, phi_k, causal)


def test_noncausal_feature_maps_stay_in_range_for_large_keys() -> None:
    """FAVOR+ key features of large keys underflow to 0 without the per-call shift; the
    non-causal maps carry it, so the implied weights still sum to 1 and match the formula."""
    projection = orthogonal_gaussian_features(8, 4, generator=torch.Generator().manual_seed(0))
    features = FavorFeatures(projection, 8)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64)
    k = 60 + torch.randn(1, 1, 6, 4, generator=g, dtype=torch.float64)  # |k'|^2 / 2 ~ 3600
    phi_q, phi_k = kernel_feature_maps(q, k, features, key_valid=None, causal=False)
    assert phi_k.shape == (1, 2, 6, 8)  # repeated to the query heads
    weights = kernel_attention_weights(phi_q, phi_k, False)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 5, dtype=torch.float64))
    # exponents relative to the largest one: exp(w.q' + w.k' - |k'|^2 / 2), q and k scaled
    w = projection / 4 ** 0.25
    log_q = q @ w.T
    log_k = (k @ w.T - k.square().sum(-1, keepdim=True) / 4 ** 0.5 / 2).expand(1, 2, 6, 8)
    log_s = torch.logsumexp(log_q[..., :, None, :] + log_k[..., None, :, :], -1)
    torch.testing.assert_close(weights, torch.softmax(log_s, -1))


class RecordingFeatures(KernelFeatures):
    """elu + 1, noting how many rows each call of queries / keys reads."""

    def __init__(self) -> None:
        self.inner = EluFeatures()
        self.query_rows: list[int] = []
        self.key_rows: list[int] = []

    def queries(self, q):
        self.query_rows.append(q.shape[2])
        return self.inner.queries(q)

    def keys(self, k, valid=None, *, shift=False):
        self.key_rows.append(k.shape[2])
        return self.inner.keys(k, valid, shift=shift)

    def queries_backward(self, q, phi, grad_phi):
        return self.inner.queries_backward(q, phi, grad_phi)

    def keys_backward(self, k, phi, grad_phi):
        return self.inner.keys_backward(k, phi, grad_phi)


def test_noncausal_path_reads_queries_and_keys_chunk_by_chunk() -> None:
    """No (L, M) or (S, M) map is ever whole: the forward maps each chunk of C rows once, and
    the backward again once, queries then keys."""
    g = torch.Generator().manual_seed(6)
    q = torch.randn(1, 2, 10, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    features = RecordingFeatures()
    out = chunked_kernel_attention(q, k, v, features, chunk=3)
    assert (features.query_rows, features.key_rows) == ([3, 3, 3, 1], [3, 3, 1])
    torch.testing.assert_close(out, causal_formula(elu1(q), elu1(k), v, 7))
    out.square().sum().backward()
    assert features.query_rows == [3, 3, 3, 1] * 2 and features.key_rows == [3, 3, 1] * 2
