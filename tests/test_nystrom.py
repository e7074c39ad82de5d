"""Nyströmformer (Xiong et al., 2021) against a float64 transcription."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnkit.functional import masks
from attnkit.layers import build_attention
from attnkit.layers.nystrom import iterative_pinv
from kinds_reference import linear64, merge64, project64, softmax_attention64


def landmarks(x: torch.Tensor, m: int) -> torch.Tensor:
    """Means of m contiguous segments, sizes differing by at most one (explicit loop)."""
    length = x.shape[-2]
    pieces = []
    for i in range(m):
        start, stop = (i * length) // m, ((i + 1) * length) // m
        pieces.append(x[..., start:stop, :].mean(-2))
    return torch.stack(pieces, -2)


def pinv_paper(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Eq. 13: Z_0 = A^T / (||A||_1 ||A||_inf); Z <- 1/4 Z (13I - AZ (15I - AZ (7I - AZ)))."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    z = a.transpose(-1, -2).clone()
    for idx in itertools.product(*(range(n) for n in a.shape[:-2])):
        one = a[idx].abs().sum(0).max()
        inf = a[idx].abs().sum(1).max()
        z[idx] = z[idx] / (one * inf)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def reference(layer, x: torch.Tensor, m: int, iterations: int) -> torch.Tensor:
    q, k, v = project64(layer, x, layer.layout.num_heads, layer.layout.num_kv_heads)
    d = q.shape[-1]
    q_l, k_l = landmarks(q, m), landmarks(k, m)
    s = d ** -0.5
    f = torch.softmax(q @ k_l.transpose(-1, -2) * s, -1)
    a = torch.softmax(q_l @ k_l.transpose(-1, -2) * s, -1)
    b = torch.softmax(q_l @ k.transpose(-1, -2) * s, -1)
    out = f @ pinv_paper(a, iterations) @ (b @ v)
    if layer.conv is not None:
        w = layer.conv.weight.double()[:, 0, :, 0]  # (H, kernel)
        pad = w.shape[1] // 2
        vp = torch.nn.functional.pad(v, (0, 0, pad, pad))
        for h in range(v.shape[1]):
            for t in range(w.shape[1]):
                out[:, h] += w[h, t] * vp[:, h, t:t + v.shape[2]]
    return linear64(layer.out_proj, merge64(out))


@pytest.mark.parametrize(("length", "m", "conv", "kv_heads"), [(16, 4, None, 4), (19, 5, 3, 2),
                                                               (12, 6, 5, 4)])
def test_nystrom_matches_paper(length: int, m: int, conv: int | None, kv_heads: int) -> None:
    layer = build_attention("nystrom", dim=32, num_heads=4, num_kv_heads=kv_heads,
                            num_landmarks=m, conv_kernel=conv).double()
    x = torch.randn(2, length, 32, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference(layer, x, m, 6))


def test_iterative_pinv_converges_to_the_pseudo_inverse() -> None:
    a = torch.softmax(torch.randn(3, 6, 6, dtype=torch.float64), -1)
    torch.testing.assert_close(iterative_pinv(a, 30), torch.linalg.pinv(a), atol=1e-8,
                               rtol=1e-6)


def test_every_token_a_landmark_is_exact_softmax() -> None:
    # m = L: F = A = B = softmax(Q K^T), and A pinv(A) A = A.
    layer = build_attention("nystrom", dim=16, num_heads=2, num_landmarks=8,
                            pinv_iterations=40).double()
    with torch.no_grad():
        layer.q_proj.weight.mul_(0.3)  # a well-conditioned softmax matrix
    x = torch.randn(2, 8, 16, dtype=torch.float64)
    q, k, v = project64(layer, x, 2, 2)
    expected = linear64(layer.out_proj, merge64(softmax_attention64(q, k, v)))
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)


def test_nystrom_refuses_causal() -> None:
    layer = build_attention("nystrom", dim=16, num_heads=2)
    with pytest.raises(ValueError, match="causal"):
        layer(torch.randn(1, 8, 16), mask=masks.causal())
    with pytest.raises(ValueError, match="odd"):
        build_attention("nystrom", dim=16, num_heads=2, conv_kernel=4)
