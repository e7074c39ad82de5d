"""Performer / FAVOR+ (Choromanski et al., 2021) against a float64 transcription."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from attnkit.functional import masks
from attnkit.layers import RecurrentState, build_attention
from attnkit.layers.performer import orthogonal_gaussian_features
from kinds_reference import linear64, merge64, project64, softmax_attention64


def favor(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor,
          causal: bool = False) -> torch.Tensor:
    """phi(x) = exp(w x - |x|^2 / 2) / sqrt(M) on x = q / d^(1/4), k / d^(1/4)."""
    d = q.shape[-1]
    q, k = q / d ** 0.25, k / d ** 0.25
    phi_q = torch.exp(q @ w.T - q.square().sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])
    phi_k = torch.exp(k @ w.T - k.square().sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])
    sim = phi_q @ phi_k.transpose(-1, -2)
    if causal:
        sim = sim.tril()
    return (sim @ v) / sim.sum(-1, keepdim=True)


@pytest.mark.parametrize("causal", [False, True])
def test_performer_matches_favor_plus(causal: bool) -> None:
    layer = build_attention("performer", dim=32, num_heads=4, num_kv_heads=2, num_features=24,
                            seed=3, chunk=4).double()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    q, k, v = project64(layer, x, 4, 2)
    expected = linear64(layer.out_proj,
                        merge64(favor(q, k, v, layer.projection.double(), causal)))
    torch.testing.assert_close(layer(x, mask=masks.causal() if causal else None), expected)


def test_features_are_orthogonal_with_gaussian_norms() -> None:
    w = orthogonal_gaussian_features(20, 8, generator=torch.Generator().manual_seed(0))
    block = w[:8] / w[:8].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(8, dtype=torch.float64))
    norms = orthogonal_gaussian_features(4000, 8, generator=torch.Generator().manual_seed(1)
                                         ).norm(dim=1)
    assert abs(norms.square().mean().item() - 8) < 0.5  # chi^2_d has mean d


def test_error_against_softmax_shrinks_with_more_features() -> None:
    torch.manual_seed(0)
    d, length = 16, 32
    q = torch.randn(4, 2, length, d, dtype=torch.float64) * 0.7
    k = torch.randn(4, 2, length, d, dtype=torch.float64) * 0.7
    v = torch.randn(4, 2, length, d, dtype=torch.float64)
    exact = softmax_attention64(q, k, v)
    errors = {}
    for m in (8, 64, 512, 4096):
        trials = [favor(q, k, v, orthogonal_gaussian_features(
            m, d, generator=torch.Generator().manual_seed(seed)))
                  for seed in range(6)]
        errors[m] = sum((t - exact).abs().mean().item() for t in trials) / len(trials)
    assert errors[8] > errors[64] > errors[512] > errors[4096]
    assert errors[4096] < errors[8] / 5


def test_random_features_estimate_the_softmax_kernel_without_bias() -> None:
    """E[phi(x) . phi(y)] = exp(x . y): averaged over many draws the estimate converges."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, dtype=torch.float64, generator=gen) * 0.4
    y = torch.randn(8, dtype=torch.float64, generator=gen) * 0.4
    estimates = []
    for _ in range(4000):
        w = orthogonal_gaussian_features(8, 8, generator=gen)
        phi_x = torch.exp(w @ x - x.square().sum() / 2)
        phi_y = torch.exp(w @ y - y.square().sum() / 2)
        estimates.append((phi_x @ phi_y / 8).item())
    mean = statistics.fmean(estimates)
    stderr = statistics.stdev(estimates) / math.sqrt(len(estimates))
    exact = math.exp(float(x @ y))
    assert stderr < 0.03 * exact  # the check below is sharp enough to see a bias of a few %
    assert abs(mean - exact) < 4 * stderr


def test_redraw_changes_features_and_state_dict_keeps_them() -> None:
    layer = build_attention("performer", dim=16, num_heads=2, num_features=8, seed=0)
    before = layer.projection.clone()
    layer.redraw_features(torch.Generator().manual_seed(5))
    assert not torch.equal(before, layer.projection)
    twin = build_attention("performer", dim=16, num_heads=2, num_features=8, seed=1)
    twin.load_state_dict(layer.state_dict())
    torch.testing.assert_close(twin.projection, layer.projection)
    periodic = build_attention("performer", dim=16, num_heads=2, num_features=8,
                               redraw_interval=2).train()
    x = torch.randn(1, 5, 16)
    seen = []
    for _ in range(5):
        periodic(x)
        seen.append(periodic.projection.clone())
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    assert periodic.draws == 2


def test_decoding_state_is_invalidated_by_redraw() -> None:
    layer = build_attention("performer", dim=16, num_heads=2, num_features=8, seed=0).double()
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    state = RecurrentState()
    steps = [layer(x[:, i:i + 1], cache=state) for i in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), layer(x, mask=masks.causal()))
    layer.redraw_features()
    with pytest.raises(ValueError, match="reset"):
        layer(x[:, :1], cache=state)
