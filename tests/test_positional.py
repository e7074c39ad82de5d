"""Rotary embeddings (both conventions) and sinusoidal tables."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnkit.functional.positional import (
    RotaryEmbedding,
    apply_rotary,
    rotary_angles,
    sinusoidal_table,
)

even_dims = st.sampled_from([2, 4, 6, 10, 16])


def half_split_order(dim: int) -> torch.Tensor:
    """Permutation from interleaved (a0 b0 a1 b1 ..) to half-split (a0 a1 .. b0 b1 ..) order."""
    return torch.cat([torch.arange(0, dim, 2), torch.arange(1, dim, 2)])


def test_rotary_angles() -> None:
    angles = rotary_angles(torch.tensor([0, 1, 5]), 6, base=100.0)
    assert angles.shape == (3, 3) and angles.dtype == torch.float64
    for row, p in enumerate([0, 1, 5]):
        for i in range(3):
            assert angles[row, i].item() == pytest.approx(p * 100.0 ** (-2 * i / 6), rel=1e-12)


@given(dim=even_dims, interleaved=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_rotary_is_multiplication_by_unit_complex_numbers(dim: int, interleaved: bool,
                                                          seed: int) -> None:
    """Each pair (a, b) becomes (a + ib) * exp(i * angle): the definition of RoPE."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 5, dim, generator=g, dtype=torch.float64)
    positions = torch.randint(0, 1000, (5,), generator=g)
    angles = rotary_angles(positions, dim)
    got = apply_rotary(x, angles, interleaved=interleaved)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., : dim // 2], x[..., dim // 2:]
    z = torch.complex(a, b) * torch.polar(torch.ones_like(angles), angles)
    want = (torch.stack([z.real, z.imag], -1).flatten(-2) if interleaved
            else torch.cat([z.real, z.imag], -1))
    torch.testing.assert_close(got, want)


@given(dim=even_dims, interleaved=st.booleans(), m=st.integers(0, 500), n=st.integers(0, 500),
       shift=st.integers(0, 300), seed=st.integers(0, 2**31 - 1))
def test_rotary_scores_depend_only_on_relative_position(dim: int, interleaved: bool, m: int,
                                                        n: int, shift: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(dim, generator=g, dtype=torch.float64), torch.randn(dim, generator=g,
                                                                           dtype=torch.float64)

    def score(pos_q: int, pos_k: int) -> float:
        rq = apply_rotary(q[None], rotary_angles(torch.tensor([pos_q]), dim),
                          interleaved=interleaved)
        rk = apply_rotary(k[None], rotary_angles(torch.tensor([pos_k]), dim),
                          interleaved=interleaved)
        return float(rq @ rk.T)

    assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=1e-9, abs=1e-9)


def test_rotary_scores_change_with_distance() -> None:
    """The relative-position property is not trivially true (e.g. an identity rotation)."""
    q = torch.randn(1, 8, dtype=torch.float64)
    angles = rotary_angles(torch.arange(4), 8)
    rotated = apply_rotary(q.expand(4, 8), angles)
    scores = rotated[0] @ rotated.T
    assert len({round(float(s), 6) for s in scores}) == 4


@given(dim=even_dims, seed=st.integers(0, 2**31 - 1))
def test_conventions_are_permutations_of_each_other(dim: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 7, dim, generator=g)
    angles = rotary_angles(torch.arange(3, 10), dim)
    perm = half_split_order(dim)
    inverse = torch.argsort(perm)
    interleaved = apply_rotary(x, angles, interleaved=True)
    half = apply_rotary(x[..., perm], angles, interleaved=False)
    torch.testing.assert_close(interleaved, half[..., inverse])
    if dim > 2:  # they are different functions of the same input
        assert not torch.allclose(interleaved, apply_rotary(x, angles, interleaved=False))


def test_rotary_keeps_norms_and_position_zero_is_identity() -> None:
    x = torch.randn(2, 3, 6, 8)
    angles = rotary_angles(torch.arange(6), 8)
    for interleaved in (False, True):
        out = apply_rotary(x, angles, interleaved=interleaved)
        torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
        torch.testing.assert_close(out[..., 0, :], x[..., 0, :])


def test_rotary_module() -> None:
    rope = RotaryEmbedding(6, base=500.0, interleaved=True)
    x = torch.randn(1, 2, 4, 6)
    positions = torch.arange(10, 14)
    torch.testing.assert_close(rope(x, positions), apply_rotary(
        x, rotary_angles(positions, 6, 500.0), interleaved=True))
    assert "interleaved=True" in repr(rope)
    assert list(rope.parameters()) == []


def test_odd_dims_are_rejected() -> None:
    with pytest.raises(ValueError, match="even head dim, got 5"):
        rotary_angles(torch.arange(3), 5)
    with pytest.raises(ValueError, match="even head dim, got 7"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="even dim, got 3"):
        sinusoidal_table(4, 3)


def test_sinusoidal_table_values() -> None:
    length, dim = 50, 12
    table = sinusoidal_table(length, dim)
    assert table.shape == (length, dim) and table.dtype == torch.float32
    for p in (0, 1, 7, 49):
        for i in range(dim // 2):
            angle = p / 10000.0 ** (2 * i / dim)
            assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert torch.equal(table[0, 0::2], torch.zeros(dim // 2))
    assert torch.equal(table[0, 1::2], torch.ones(dim // 2))
    custom = sinusoidal_table(3, 4, base=100.0)
    assert custom[2, 2].item() == pytest.approx(math.sin(2 / 100.0 ** 0.5), abs=1e-6)


def test_documented_defaults_and_float64_tables() -> None:
    """base 10000 and the half-split convention by default; angles in float64; the sin/cos
    table computed in float64 and rounded once to float32 (float32 arithmetic is ~1e-5 off at
    position 4999)."""
    positions = torch.arange(7)
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    angles = rotary_angles(positions, 8)
    assert angles.dtype == torch.float64
    torch.testing.assert_close(angles, rotary_angles(positions, 8, base=10000.0))
    torch.testing.assert_close(angles[3, 1], torch.tensor(3 * 10000.0 ** (-2 / 8),
                                                           dtype=torch.float64))
    torch.testing.assert_close(apply_rotary(x, angles),
                               apply_rotary(x, angles, interleaved=False))
    rope = RotaryEmbedding(8)
    assert (rope.base, rope.interleaved) == (10000.0, False)
    torch.testing.assert_close(rope(x, positions), apply_rotary(x, angles))
    for even in (2, 4, 10):  # every even head dim is accepted, odd ones are refused
        RotaryEmbedding(even)
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(9)
    table = sinusoidal_table(5000, 6)
    assert table.dtype == torch.float32
    p, i = 4999, 1
    want = torch.tensor([math.sin(p / 10000 ** (2 * i / 6)), math.cos(p / 10000 ** (2 * i / 6))],
                        dtype=torch.float64)
    torch.testing.assert_close(table[p, 2 * i:2 * i + 2].double(), want, atol=1e-7, rtol=0)


@pytest.mark.parametrize("interleaved", [False, True])
def test_per_sequence_positions_rotate_each_row_by_its_own(interleaved: bool) -> None:
    """(B, L) positions (left-padded batches): row b of every head is rotated exactly as that
    sequence alone with its (L,) positions."""
    x = torch.randn(3, 2, 4, 6, dtype=torch.float64)  # (B, H, L, D)
    positions = torch.tensor([[0, 1, 2, 3], [0, 0, 0, 1], [5, 6, 7, 8]])  # (B, L)
    rotated = apply_rotary(x, rotary_angles(positions, 6), interleaved=interleaved)
    assert rotated.shape == x.shape
    for b in range(3):
        alone = apply_rotary(x[b:b + 1], rotary_angles(positions[b], 6), interleaved=interleaved)
        torch.testing.assert_close(rotated[b:b + 1], alone, rtol=0, atol=0)
    assert not torch.allclose(rotated[0], rotated[2])  # the rows' positions differ
