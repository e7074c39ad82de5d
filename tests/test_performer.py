"""Performer / FAVOR+ (Choromanski et al., 2021) against a float64 transcription."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from attnkit.functional import masks
from attnkit.layers import RecurrentState, build_attention
from attnkit.layers.performer import orthogonal_gaussian_features
from kinds_reference import (
    assert_same_gradients,
    linear64,
    merge64,
    padding_case,
    project64,
    softmax_attention64,
)


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


def old_full_map_favor(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor,
                       key_valid: torch.Tensor | None) -> torch.Tensor:
    """The pre-chunking non-causal formula: full (L, M) maps, query rows shifted by their own
    detached max, all keys by one detached max over (S, M); padded keys' features zeroed."""
    d, m = q.shape[-1], w.shape[0]
    q, k = q / d ** 0.25, k / d ** 0.25
    q_log = q @ w.T - q.square().sum(-1, keepdim=True) / 2 - math.log(m) / 2
    k_log = k @ w.T - k.square().sum(-1, keepdim=True) / 2 - math.log(m) / 2
    phi_q = torch.exp(q_log - q_log.amax(-1, keepdim=True).detach())
    phi_k = torch.exp(k_log - k_log.amax((-1, -2), keepdim=True).detach())
    if key_valid is not None:
        phi_k = phi_k * key_valid[:, None, :, None]
    num = phi_q @ (phi_k.transpose(-1, -2) @ v)
    den = phi_q @ phi_k.sum(2).unsqueeze(-1)
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), 0.0)


def chunk_scaled_input(length: int, chunk: int, dim: int) -> torch.Tensor:
    """float64 (2, length, dim) whose scale alternates by chunk: the chunks' maximum exponents
    differ by several units, so wrong rescaling of the chunk sums shows."""
    scale = 1.0 + 1.5 * ((torch.arange(length) // chunk) % 2).double()
    return torch.randn(2, length, dim, dtype=torch.float64) * scale[None, :, None]


@pytest.mark.parametrize("padding", ["none", "lengths", "holes"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_chunked_noncausal_equals_full_map_formula(padding: str, kv_heads: int) -> None:
    """L = 37 in chunks of 8 (last chunk short): outputs and gradients of x and of every
    parameter equal the old full-map formula in float64. "holes" pads whole chunks (their shift
    is -inf): the first two in one sequence, a middle one in the other."""
    torch.manual_seed(0)
    length = 37
    layer = build_attention("performer", dim=32, num_heads=4, num_kv_heads=kv_heads,
                            num_features=24, seed=3, noncausal_chunk=8).double()
    x = chunk_scaled_input(length, 8, 32).requires_grad_(True)
    valid = padding_case(padding, length)
    mask = None if padding == "none" else masks.padding(valid)
    got = layer(x, mask=mask)
    q, k, v = project64(layer, x, 4, kv_heads)
    expected = linear64(layer.out_proj, merge64(old_full_map_favor(
        q, k, v, layer.projection.double(), None if padding == "none" else valid.double())))
    torch.testing.assert_close(got, expected)
    assert_same_gradients(got, expected, [x, *layer.parameters()])


def test_chunk_sums_are_rescaled_to_a_common_maximum() -> None:
    """Chunk maxima far apart (one chunk's keys 6x larger): each chunk sum is taken relative to
    its own maximum, so adding them without the exp(m_c - m) factors would be far off."""
    torch.manual_seed(1)
    layer = build_attention("performer", dim=16, num_heads=2, num_features=16, seed=0,
                            noncausal_chunk=5).double()
    x = torch.randn(1, 15, 16, dtype=torch.float64)
    x[:, 5:10] *= 6.0
    q, k, v = project64(layer, x, 2, 2)
    expected = linear64(layer.out_proj, merge64(old_full_map_favor(
        q, k, v, layer.projection.double(), None)))
    torch.testing.assert_close(layer(x), expected)
    whole = build_attention("performer", dim=16, num_heads=2, num_features=16, seed=0,
                            noncausal_chunk=64).double()
    whole.load_state_dict(layer.state_dict())
    torch.testing.assert_close(whole(x), expected)


def test_queries_without_a_visible_key_give_zeros_and_finite_gradients() -> None:
    layer = build_attention("performer", dim=16, num_heads=2, num_features=8, seed=0,
                            noncausal_chunk=4).double()
    x = torch.randn(2, 10, 16, dtype=torch.float64, requires_grad=True)
    mask = masks.padding(torch.tensor([10, 0]))  # the second sequence has no key at all
    heads = layer.attend_heads(x, mask=mask)
    assert torch.isfinite(heads).all()
    assert torch.equal(heads[1], torch.zeros_like(heads[1]))
    assert heads[0].abs().sum() > 0
    heads.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in layer.parameters())


def test_noncausal_training_stores_no_full_feature_map() -> None:
    """Autograd keeps per-chunk inputs only: what it saves with M trailing features stays far
    below one (B, H, L, M) map (autograd through whole maps would hold all of them)."""
    layer = build_attention("performer", dim=32, num_heads=4, num_features=64, seed=0,
                            noncausal_chunk=16)
    x = torch.randn(1, 256, 32, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    feature_elements = sum(t.numel() for t in saved if t.dim() and t.shape[-1] == 64)
    assert feature_elements < 4 * 256 * 64 // 8
    y.sum().backward()  # and backward still works through the recomputation
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_a_redraw_between_forward_and_backward_leaves_that_backward_alone() -> None:
    """The non-causal backward uses the features of its own forward (gradient accumulation with
    ``redraw_interval`` may redraw before an earlier forward's backward runs)."""
    layer = build_attention("performer", dim=16, num_heads=2, num_features=8, seed=0,
                            noncausal_chunk=4).double()
    x = torch.randn(1, 10, 16, dtype=torch.float64, requires_grad=True)
    expected = torch.autograd.grad(layer(x).sum(), x)[0]
    y = layer(x)
    layer.redraw_features(torch.Generator().manual_seed(9))
    got = torch.autograd.grad(y.sum(), x)[0]
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(torch.autograd.grad(layer(x).sum(), x)[0], expected)
