"""Masks: dense matrices from the definitions, tile states that agree with them, composition,
printing and drawing."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnkit import masks
from attnkit.functional.masks import EMPTY, FULL, PARTIAL, Mask
from strategies import PRIMITIVE_KINDS, composed_masks, primitive_masks


def tile_truth(allowed: torch.Tensor, block_q: int, block_k: int) -> tuple[torch.Tensor, ...]:
    """Per-tile (any, all) of a dense (B, H, Lq, Lk) bool matrix, computed by brute force."""
    b, h, lq, lk = allowed.shape
    n_q, n_k = math.ceil(lq / block_q), math.ceil(lk / block_k)
    any_ = torch.zeros(b, h, n_q, n_k, dtype=torch.bool)
    all_ = torch.zeros(b, h, n_q, n_k, dtype=torch.bool)
    for qi in range(n_q):
        for kj in range(n_k):
            tile = allowed[..., qi * block_q:(qi + 1) * block_q, kj * block_k:(kj + 1) * block_k]
            any_[..., qi, kj] = tile.flatten(-2).any(-1)
            all_[..., qi, kj] = tile.flatten(-2).all(-1)
    return any_, all_


def check_states(mask: Mask, allowed: torch.Tensor, block_q: int, block_k: int,
                 exact: bool) -> None:
    """EMPTY tiles hold no allowed pair, FULL only allowed pairs; ``exact``: PARTIAL is mixed."""
    b, h, lq, lk = allowed.shape
    states = mask.block_states(lq, lk, block_q, block_k)
    n_q, n_k = math.ceil(lq / block_q), math.ceil(lk / block_k)
    assert states.dtype == torch.int8
    assert states.dim() == 4 and states.shape[-2:] == (n_q, n_k)
    assert states.shape[0] in (1, b) and states.shape[1] in (1, h)
    assert set(states.unique().tolist()) <= {EMPTY, PARTIAL, FULL}
    states = states.expand(b, h, n_q, n_k)
    any_, all_ = tile_truth(allowed, block_q, block_k)
    assert not (any_ & (states == EMPTY)).any(), f"{mask!r}: an EMPTY tile has allowed pairs"
    assert not (~all_ & (states == FULL)).any(), f"{mask!r}: a FULL tile has masked pairs"
    if exact:
        assert torch.equal(states == EMPTY, ~any_), f"{mask!r}: a PARTIAL tile is empty"
        assert torch.equal(states == FULL, all_), f"{mask!r}: a PARTIAL tile is full"


dims = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12))


@given(dims=dims, data=st.data())
def test_primitive_dense_matches_definition(dims: tuple[int, ...], data: st.DataObject) -> None:
    b, h, lq, lk = dims
    mask, expected = data.draw(primitive_masks(b, h, lq, lk))
    dense = mask.dense(lq, lk)
    assert dense.dtype == torch.bool and dense.dim() == 4 and dense.shape[-2:] == (lq, lk)
    assert dense.shape[0] in (1, b) and dense.shape[1] in (1, h)
    assert torch.equal(dense.expand(b, h, lq, lk), expected), repr(mask)


@given(dims=dims, data=st.data())
def test_composed_dense_matches_definition(dims: tuple[int, ...], data: st.DataObject) -> None:
    b, h, lq, lk = dims
    mask, expected = data.draw(composed_masks(b, h, lq, lk, depth=3))
    assert torch.equal(mask.dense(lq, lk).expand(b, h, lq, lk), expected), repr(mask)


@given(dims=dims, data=st.data())
def test_mask_mod_matches_dense(dims: tuple[int, ...], data: st.DataObject) -> None:
    """The FlexAttention form evaluates the same rule on index tensors."""
    b, h, lq, lk = dims
    mask, expected = data.draw(composed_masks(b, h, lq, lk))
    mod = mask.mask_mod(lq, lk)
    got = mod(torch.arange(b).view(-1, 1, 1, 1), torch.arange(h).view(1, -1, 1, 1),
              torch.arange(lq).view(1, 1, -1, 1), torch.arange(lk).view(1, 1, 1, -1))
    assert torch.equal(got.expand(b, h, lq, lk), expected)


# Kinds whose tile states are exact (PARTIAL only when the tile is really mixed). Documents are
# exact for sorted ids shared by queries and keys; other id layouts may be conservatively PARTIAL.
EXACT_KINDS = [k for k in PRIMITIVE_KINDS if k != "document"]


@given(dims=dims, tiles=st.tuples(st.integers(1, 13), st.integers(1, 13)), data=st.data())
def test_primitive_block_states_are_exact(dims: tuple[int, ...], tiles: tuple[int, int],
                                          data: st.DataObject) -> None:
    b, h, lq, lk = dims
    mask, expected = data.draw(primitive_masks(b, h, lq, lk, EXACT_KINDS))
    check_states(mask, expected, *tiles, exact=True)


@given(dims=dims, tiles=st.tuples(st.integers(1, 13), st.integers(1, 13)), data=st.data())
def test_composed_block_states_agree_with_dense(dims: tuple[int, ...], tiles: tuple[int, int],
                                                data: st.DataObject) -> None:
    b, h, lq, lk = dims
    mask, expected = data.draw(composed_masks(b, h, lq, lk, depth=3))
    check_states(mask, expected, *tiles, exact=False)


@given(lengths=st.lists(st.integers(1, 5), min_size=1, max_size=5),
       tiles=st.tuples(st.integers(1, 7), st.integers(1, 7)))
def test_packed_document_states_are_exact(lengths: list[int], tiles: tuple[int, int]) -> None:
    ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]
    mask = masks.document(ids)
    allowed = (ids[:, None, :, None] == ids[:, None, None, :])
    check_states(mask, allowed, *tiles, exact=True)


def test_block_states_never_build_the_dense_matrix_for_analytic_masks() -> None:
    """Band, sink, padding and documents answer for a 1M x 1M matrix instantly."""
    n = 1 << 20
    m = masks.causal() & (masks.sliding_window(8192) | masks.sink(4)) & masks.padding([n - 7])
    states = m.block_states(n, n, 4096, 4096)
    assert states.shape == (1, 1, 256, 256)
    assert states[0, 0, 10, 0] == PARTIAL  # sink keys 0..3 in a tile of 4096 keys
    assert states[0, 0, 10, 10] == PARTIAL  # the diagonal
    assert states[0, 0, 10, 9] == FULL  # inside the window
    assert states[0, 0, 10, 8] == PARTIAL  # the window's left edge
    assert states[0, 0, 10, 5] == EMPTY  # left of the window, right of the sinks
    assert states[0, 0, 255, 255] == PARTIAL  # the padded end
    assert states[0, 0, 10, 11] == EMPTY  # the future


def test_dense_shapes() -> None:
    assert masks.causal().dense(3, 5).shape == (1, 1, 3, 5)
    assert masks.full().dense(2, 4).shape == (1, 1, 2, 4)
    assert masks.padding([2, 3]).dense(4, 3).shape == (2, 1, 4, 3)
    assert masks.padding(torch.ones(3, 6, dtype=torch.bool)).dense(2, 6).shape == (3, 1, 2, 6)
    assert masks.document(torch.zeros(2, 5, dtype=torch.long)).dense(5, 5).shape == (2, 1, 5, 5)
    per_head = masks.dense(torch.ones(1, 4, 3, 3, dtype=torch.bool))
    assert per_head.dense(3, 3).shape == (1, 4, 3, 3)
    assert (masks.padding([1, 2]) & per_head).dense(3, 3).shape == (2, 4, 3, 3)
    assert masks.dense(torch.ones(3, 3, dtype=torch.bool)).dense(3, 3).shape == (1, 1, 3, 3)


def test_bottom_right_alignment_for_decoding() -> None:
    """With Lq < Lk the last query is the last key: one decoding step sees the whole cache."""
    allowed = masks.causal().dense(2, 5)[0, 0]
    assert allowed.tolist() == [[True, True, True, True, False], [True] * 5]
    top_left = masks.causal(offset=0).dense(2, 5)[0, 0]
    assert top_left.tolist() == [[True, False, False, False, False],
                                 [True, True, False, False, False]]
    window = masks.sliding_window(1).dense(1, 6)[0, 0]
    assert window.tolist() == [[False, False, False, False, True, True]]


def test_repr_is_readable() -> None:
    cases = {
        masks.causal(): "causal()",
        masks.causal(offset=2): "causal(offset=2)",
        masks.sliding_window(3): "sliding_window(3)",
        masks.sliding_window(3, right=1): "sliding_window(3, right=1)",
        masks.sliding_window(3, offset=-1): "sliding_window(3, offset=-1)",
        masks.sink(4): "sink(4)",
        masks.full(): "full()",
        masks.padding([3, 5]): "padding(lengths=[3, 5])",
        masks.padding(torch.ones(2, 7, dtype=torch.bool)): "padding(key_valid of shape (2, 7))",
        masks.document(torch.zeros(3, 4, dtype=torch.long)): "document(3 sequences)",
        masks.dense(torch.ones(4, 4, dtype=torch.bool)): "dense((1, 1, 4, 4))",
        masks.causal() & (masks.sliding_window(8) | masks.sink(2)):
            "(causal() & (sliding_window(8) | sink(2)))",
        ~masks.causal(): "~causal()",
    }
    for mask, text in cases.items():
        assert repr(mask) == text


def test_draw_shows_the_tile_pattern() -> None:
    assert masks.causal().draw(4, 4) == "|#   |\n|##  |\n|### |\n|####|"
    assert masks.causal().draw(4, 4, block_q=2, block_k=2) == "|. |\n|#.|"
    streaming = masks.causal() & (masks.sliding_window(1) | masks.sink(1))
    assert streaming.draw(4, 4) == "|#   |\n|##  |\n|### |\n|# ##|"
    padded = masks.padding([3])
    assert padded.draw(2, 5, block_q=1, block_k=2) == "|#. |\n|#. |"


@pytest.mark.parametrize("make, message", [
    (lambda: masks.sliding_window(-1), "left=-1"),
    (lambda: masks.sliding_window(2, right=-3), "right=-3"),
    (lambda: masks.sink(-2), "-2"),
    (lambda: masks.padding([3, -1]), "[3, -1]"),
    (lambda: masks.padding(torch.tensor([1.5, 2.0])), "float32"),
    (lambda: masks.padding(torch.ones(2, 3, 4, dtype=torch.bool)), "(2, 3, 4)"),
    (lambda: masks.document(torch.rand(2, 3)), "integers"),
    (lambda: masks.document(torch.zeros(2, 3, dtype=torch.long),
                            torch.zeros(3, 3, dtype=torch.long)), "batch 2"),
    (lambda: masks.dense(torch.ones(3, 3)), "torch.float32"),
    (lambda: masks.dense(torch.ones(3, dtype=torch.bool)), "(3,)"),
    (lambda: masks.padding([1, 2]) & masks.padding([1, 2, 3]), "batch size 2 and 3"),
    (lambda: masks.dense(torch.ones(1, 2, 3, 3, dtype=torch.bool))
     & masks.dense(torch.ones(1, 3, 3, 3, dtype=torch.bool)), "head count 2 and 3"),
])
def test_bad_mask_arguments_raise_clear_errors(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value)


def test_lengths_of_data_masks_are_checked() -> None:
    with pytest.raises(ValueError, match=r"dense mask is \(3, 3\) but attention is \(3, 4\)"):
        masks.dense(torch.ones(3, 3, dtype=torch.bool)).dense(3, 4)
    with pytest.raises(ValueError, match="covers 5 keys but there are 4"):
        masks.padding(torch.ones(1, 5, dtype=torch.bool)).dense(2, 4)
    with pytest.raises(ValueError, match="cover 3 queries and 3 keys"):
        masks.document(torch.zeros(1, 3, dtype=torch.long)).dense(4, 4)


def test_on_device_moves_tensors_and_keeps_meaning() -> None:
    """``validate`` moves masks next to q; tensor-free masks and same-device calls are no-ops."""
    cpu, meta = torch.device("cpu"), torch.device("meta")
    band = masks.causal() & masks.sliding_window(2)
    assert band.on_device(meta) is band
    lengths = masks.padding([3, 1])
    assert lengths.on_device(cpu) is lengths
    combined = band | ~(lengths & masks.document(torch.zeros(2, 4, dtype=torch.long))
                        & masks.dense(torch.ones(4, 4, dtype=torch.bool))
                        & masks.padding(torch.ones(2, 4, dtype=torch.bool)))
    moved = combined.on_device(meta)
    assert moved is not combined and type(moved) is type(combined)
    assert moved.batch_size == 2
    tensors: list[torch.Tensor] = []

    def collect(m: Mask) -> None:
        for name in ("left", "right", "inner"):
            if hasattr(m, name):
                collect(getattr(m, name))
        for name in ("lengths", "key_valid", "q_ids", "kv_ids", "tensor"):
            if isinstance(getattr(m, name, None), torch.Tensor):
                tensors.append(getattr(m, name))

    collect(moved)
    assert len(tensors) == 5 and all(t.device == meta for t in tensors)


def test_band_geometry_of_positional_masks() -> None:
    """``band`` gives the (lo, hi) of k - q that a mask allows, checked against its dense form."""
    cases = [(masks.causal(), (None, 3)), (masks.sliding_window(4), (-1, 3)),
             (masks.sliding_window(2, 5, offset=0), (-2, 5)),
             (masks.causal() & masks.sliding_window(6, 2), (-3, 3)), (masks.full(), (None, None)),
             # and-combinations where one or both sides leave a bound open
             (masks.causal() & masks.causal(offset=1), (None, 1)),
             (masks.full() & masks.full(), (None, None)),
             (masks.full() & masks.sliding_window(2, 20), (1, None))]
    for mask, want in cases:
        assert mask.band(9, 12) == want, mask
        lo, hi = want
        rel = torch.arange(12)[None, :] - torch.arange(9)[:, None]
        expected = torch.ones(9, 12, dtype=torch.bool)
        if lo is not None:
            expected &= rel >= lo
        if hi is not None:
            expected &= rel <= hi
        assert torch.equal(mask.dense(9, 12)[0, 0], expected), mask
    # Sides that exclude no key at these lengths are reported as unbounded.
    assert masks.sliding_window(100).band(9, 12) == (None, 3)  # wider than the queries
    assert masks.causal().band(1, 10) == (None, None)  # one decoding query sees every key
    assert masks.sliding_window(8, offset=0).band(9, 12) == (None, 0)
    assert masks.sliding_window(7, offset=0).band(9, 12) == (-7, 0)
    # an upper side that excludes a single pair (query 0, key 11) still binds
    assert masks.causal(offset=10).band(9, 12) == (None, 10)
    assert masks.causal(offset=11).band(9, 12) == (None, None)
    for not_a_band in (masks.padding([3]), masks.causal() | masks.sink(2), ~masks.causal(),
                       masks.causal() & masks.padding([5])):
        assert not_a_band.band(9, 12) is None


def test_block_diagonal_runs_of_packed_documents() -> None:
    ids = torch.tensor([[0, 0, 1, 1, 1, 2], [4, 4, 4, 4, 9, 9]])
    runs = [[(0, 2), (2, 5), (5, 6)], [(0, 4), (4, 6)]]
    assert masks.document(ids).block_diagonal(6, 6) == (runs, False)
    assert (masks.document(ids) & masks.causal()).block_diagonal(6, 6) == (runs, True)
    assert (masks.full() & masks.document(ids)).block_diagonal(6, 6) == (runs, False)
    for not_diagonal in (masks.document(torch.tensor([[0, 0, 1, 1, 0, 0]])),  # id 0 comes back
                         masks.document(ids) & masks.padding([6, 5]),
                         masks.document(ids) & masks.sliding_window(2)):
        assert not_diagonal.block_diagonal(6, 6) is None
    assert masks.document(ids[:, 2:], ids).block_diagonal(4, 6) is None  # queries != keys
    # The runs describe the dense mask exactly.
    dense = torch.zeros(6, 6, dtype=torch.bool)
    for a, b in runs[1]:
        dense[a:b, a:b] = True
    assert torch.equal(masks.document(ids).dense(6, 6)[1, 0], dense)


def _dense_from_structure(shape: masks.MaskStructure, batch: int, lq: int,
                          lk: int) -> torch.Tensor | None:
    """The (B, Lq, Lk) bool matrix a structure describes, built from its fields alone."""
    rel = torch.arange(lk)[None, :] - torch.arange(lq)[:, None]  # k - q
    out = torch.ones(batch, lq, lk, dtype=torch.bool)
    if shape.kind in ("band", "padding", "full"):
        if shape.lo is not None:
            out &= rel >= shape.lo
        if shape.hi is not None:
            out &= rel <= shape.hi
        if shape.key_valid is not None:
            out &= shape.key_valid[:, None, :]
        return out
    if shape.kind == "documents":
        assert shape.runs is not None
        out = torch.zeros(batch, lq, lk, dtype=torch.bool)
        for b, runs in enumerate(shape.runs):
            for a, e in runs:
                out[b, a:e, a:e] = True
        if shape.causal:
            out &= rel <= 0
        return out
    return None


@given(data=st.data(), lq=st.integers(1, 12), extra=st.integers(0, 4))
def test_structure_describes_the_dense_mask_exactly(data, lq: int, extra: int) -> None:
    """Whatever kind ``structure`` reports, its fields rebuild the dense mask; the composites a
    planner relies on report their kind (not opaque)."""
    lk = lq + extra
    mask, _ = data.draw(composed_masks(2, 1, lq, lk))
    shape = mask.structure(lq, lk)
    rebuilt = _dense_from_structure(shape, 2, lq, lk)
    if rebuilt is not None:
        assert torch.equal(rebuilt, mask.dense(lq, lk).expand(2, 1, lq, lk)[:, 0]), (mask, shape)
    assert (masks.causal() & masks.padding([lk, 1])).structure(lq, lk).kind == "padding"
    assert masks.full().structure(lq, lk).kind == "full"
    assert masks.dense(torch.ones(lq, lk, dtype=torch.bool)).structure(lq, lk).kind == "opaque"


def test_structure_kinds_and_causal_test() -> None:
    ids = torch.tensor([[0, 0, 1, 1, 1, 2]])
    assert masks.sliding_window(2).structure(6, 6) == masks.MaskStructure("band", -2, 0)
    docs = (masks.document(ids) & masks.causal()).structure(6, 6)
    assert (docs.kind, docs.runs, docs.causal) == ("documents", [[(0, 2), (2, 5), (5, 6)]], True)
    padded = (masks.padding([4, 2]) & masks.causal() & masks.padding(torch.tensor(
        [[True] * 5 + [False], [True] * 6]))).structure(6, 6)
    assert (padded.kind, padded.lo, padded.hi) == ("padding", None, 0)
    assert padded.key_valid is not None
    assert padded.key_valid.tolist() == [[True] * 4 + [False] * 2, [True] * 2 + [False] * 4]
    assert (masks.causal() | masks.sink(2)).structure(6, 6).kind == "opaque"
    assert masks.is_causal(masks.causal(), 4, 9)
    assert masks.is_causal(masks.causal(offset=0), 4, 9, offset=0)
    assert not masks.is_causal(masks.causal(offset=0), 4, 9)
    assert not masks.is_causal(masks.sliding_window(3), 9, 9)
    assert not masks.is_causal(None, 9, 9)


def test_tile_evaluates_any_mask_on_part_of_the_matrix() -> None:
    mask = masks.causal() & masks.padding([5, 3])
    q_idx, k_idx = torch.tensor([1, 4]), torch.tensor([0, 2, 3])
    expected = mask.dense(6, 6)[:, :, q_idx][:, :, :, k_idx]
    assert torch.equal(mask.tile(q_idx, k_idx, 6, 6), expected)
    assert mask.tile(q_idx, k_idx, 6, 6).shape == (2, 1, 2, 3)


def _band_definition(lq: int, lk: int, left: int | None, right: int,
                     offset: int | None) -> torch.Tensor:
    """Keys ``i + off - left <= j <= i + off + right`` (``off`` bottom-right by default)."""
    off = lk - lq if offset is None else offset
    rel = torch.arange(lk)[None, :] - (torch.arange(lq)[:, None] + off)
    allowed = rel <= right
    if left is not None:
        allowed &= rel >= -left
    return allowed[None, None]


def _exact_cases(lq: int, lk: int) -> list[tuple[Mask, torch.Tensor]]:
    """Masks whose tile states are exact, each with its (B|1, H|1, Lq, Lk) definition."""
    g = torch.Generator().manual_seed(lq * 100 + lk)
    j = torch.arange(lk)
    cases: list[tuple[Mask, torch.Tensor]] = [(masks.full(), torch.ones(1, 1, lq, lk).bool())]
    for offset in (None, -2, 2):
        cases.append((masks.causal(offset=offset), _band_definition(lq, lk, None, 0, offset)))
        for left, right in ((0, 0), (1, 0), (3, 2), (0, 1)):
            cases.append((masks.sliding_window(left, right, offset=offset),
                          _band_definition(lq, lk, left, right, offset)))
    for count in (0, 1, 3, 5):
        cases.append((masks.sink(count), (j < count).expand(1, 1, lq, lk)))
    lengths = torch.tensor([0, 3, lk])
    cases.append((masks.padding(lengths), (j[None, :] < lengths[:, None])[:, None, None]
                  .expand(3, 1, lq, lk)))
    valid = torch.rand(2, lk, generator=g) < 0.6
    valid[0, :2] = True  # a full and (below) an empty tile whatever the tile size
    valid[1] = False
    cases.append((masks.padding(valid), valid[:, None, None].expand(2, 1, lq, lk)))
    table = torch.rand(2, 3, lq, lk, generator=g) < 0.5
    table[0, 0] = True
    table[1, 2] = False
    cases.append((masks.dense(table), table))
    if lq == lk:  # sorted ids shared by queries and keys: block diagonal, exact states
        ids = (torch.arange(lq) * 3 // lq)[None]
        cases.append((masks.document(ids), (ids[:, :, None] == ids[:, None, :])[:, None]))
    return cases


@pytest.mark.parametrize("lq, lk", [(5, 5), (4, 9), (9, 4)])
def test_tile_states_are_exact_on_a_grid(lq: int, lk: int) -> None:
    """Every primitive kind, every tile size below: FULL exactly where the whole tile may
    attend, EMPTY exactly where none of it may (tiles that end or start on a mask edge)."""
    for mask, allowed in _exact_cases(lq, lk):
        assert torch.equal(mask.dense(lq, lk).expand(allowed.shape), allowed), mask
        for tiles in ((1, 1), (2, 3), (3, 2), (4, 4)):
            check_states(mask, allowed, *tiles, exact=True)


def test_masks_evaluate_on_the_device_they_are_asked_for() -> None:
    """``dense``, ``tile`` and ``block_states`` build every index on the device asked for and
    move the mask's tensors there (meta here: anything left on the CPU would fail to combine
    with it or come back on the CPU)."""
    meta = torch.device("meta")
    lq, lk = 7, 9
    ids = torch.tensor([[0, 0, 0, 1, 1, 1, 2]])
    per_head = masks.dense(torch.rand(2, 3, lq, lk) < 0.5)
    kinds = [masks.full(), masks.causal(), masks.sliding_window(2, 1), masks.sink(2),
             masks.padding([3, 9]), masks.padding(torch.rand(2, lk) < 0.5),
             masks.document(ids, torch.tensor([[0, 0, 1, 1, 1, 2, 2, 2, 2]])), per_head]
    combined = [kinds[1] & kinds[4], kinds[3] | kinds[5], ~kinds[6], per_head & kinds[1],
                kinds[1] | per_head]
    for mask in kinds + combined:
        for candidate in (mask, mask.on_device(meta)):
            assert candidate.block_states(lq, lk, 2, 4, device=meta).device == meta, mask
            assert candidate.dense(lq, lk, device=meta).device == meta, mask
            tile = candidate.tile(torch.arange(2, device=meta), torch.arange(3, device=meta),
                                  lq, lk)
            assert tile.device == meta, mask
    for padded in (masks.padding([3, 9]), masks.padding(torch.rand(2, lk) < 0.5)):
        key_valid = padded.on_device(meta).structure(lq, lk).key_valid
        assert key_valid is not None and key_valid.device == meta


def test_combined_data_masks_check_each_part_at_the_call_shape() -> None:
    """A combination applies where each part applies: batch 2, 3 heads, 4 queries, 6 keys."""
    per_head = masks.dense(torch.ones(1, 3, 4, 6, dtype=torch.bool))
    padded = masks.padding([4, 6])  # binds the batch only
    docs = masks.document(torch.zeros(2, 4, dtype=torch.long),
                          torch.zeros(2, 6, dtype=torch.long))
    valid = masks.padding(torch.ones(2, 6, dtype=torch.bool))  # binds the batch and Lk
    wrong_lq, wrong_lk = ((2, 3, 5, 6), "queries|dense mask is"), ((2, 3, 4, 7), "keys|dense")
    wrong_batch, wrong_heads = ((3, 3, 4, 6), "batch size 2"), ((2, 4, 4, 6), "has 3 heads")
    cases = [(padded & per_head, [wrong_lq, wrong_lk, wrong_batch, wrong_heads]),
             (per_head | padded, [wrong_lq, wrong_lk, wrong_batch, wrong_heads]),
             (docs & per_head, [wrong_lq, wrong_lk, wrong_batch, wrong_heads]),
             (per_head & docs, [wrong_lq, wrong_lk, wrong_batch, wrong_heads]),
             (valid | per_head, [wrong_lq, wrong_lk, wrong_batch, wrong_heads]),
             (~per_head, [wrong_lq, wrong_lk, wrong_heads]), (~padded, [wrong_batch]),
             (~docs, [wrong_lq, wrong_lk, wrong_batch]), (~valid, [wrong_lk, wrong_batch])]
    for mask, errors in cases:
        mask.check_shape(2, 3, 4, 6)
        for shape, message in errors:
            with pytest.raises(ValueError, match=message):
                mask.check_shape(*shape)


def test_not_keeps_the_heads_of_what_it_negates() -> None:
    table = torch.rand(1, 3, 4, 4) < 0.5
    negated = ~masks.dense(table)
    assert negated.num_heads == 3
    assert torch.equal(negated.dense(4, 4), ~table)
    assert torch.equal(negated.tile(torch.arange(4), torch.arange(4), 4, 4), ~table)


def test_on_device_to_where_a_mask_already_is_returns_it() -> None:
    cpu, meta = torch.device("cpu"), torch.device("meta")
    for mask in (~masks.causal(), ~masks.padding([2]), masks.dense(torch.ones(3, 3).bool()),
                 masks.document(torch.zeros(2, 3, dtype=torch.long)),
                 masks.padding(torch.ones(2, 3).bool())):
        assert mask.on_device(cpu) is mask, mask
    # ids given on two devices: both end up on the one asked for
    split = masks.document(torch.zeros(1, 4, dtype=torch.long),
                           torch.zeros(1, 4, dtype=torch.long, device=meta))
    moved = split.on_device(meta)
    assert moved.q_ids.device == meta and moved.kv_ids.device == meta  # type: ignore[attr-defined]


def test_padding_structure_keeps_the_tightest_band_of_every_part() -> None:
    lengths = [4, 2]
    cases = [(masks.padding(lengths) & masks.sliding_window(2), (-2, 0)),
             ((masks.sliding_window(1) & masks.padding(lengths)) & masks.sliding_window(3),
              (-1, 0)),
             (masks.sliding_window(3, 2) & (masks.padding(lengths) & masks.causal()), (-3, 0))]
    for mask, (lo, hi) in cases:
        shape = mask.structure(6, 6)
        assert (shape.kind, shape.lo, shape.hi) == ("padding", lo, hi), mask
        rebuilt = _dense_from_structure(shape, 2, 6, 6)
        assert rebuilt is not None
        assert torch.equal(rebuilt, mask.dense(6, 6)[:, 0]), mask


@pytest.mark.parametrize("shape", [(1, 1, 4, 6), (2, 1, 4, 6), (1, 2, 4, 6), (2, 2, 4, 6)])
def test_mask_mod_of_a_dense_mask_broadcasts_over_batch_and_heads(
        shape: tuple[int, ...]) -> None:
    """FlexAttention calls ``mask_mod`` with the real batch and head indices (0 and 1 here),
    also for a mask shared by every sequence or head."""
    table = torch.rand(shape) < 0.5
    mod = masks.dense(table).mask_mod(4, 6)
    got = mod(torch.arange(2).view(-1, 1, 1, 1), torch.arange(2).view(1, -1, 1, 1),
              torch.arange(4).view(1, 1, -1, 1), torch.arange(6).view(1, 1, 1, -1))
    assert torch.equal(got, table.expand(2, 2, 4, 6))


def test_document_ids_of_one_sequence_and_errors_naming_the_values() -> None:
    one = masks.document(torch.tensor([0, 0, 1]))
    assert one.batch_size == 1
    assert one.dense(3, 3)[0, 0].tolist() == [[True, True, False], [True, True, False],
                                              [False, False, True]]
    cached = masks.document(torch.tensor([1, 2]), torch.tensor([0, 1, 1, 2]))
    assert cached.dense(2, 4)[0, 0].tolist() == [[False, True, True, False],
                                                 [False, False, False, True]]
    cases = [((torch.rand(1, 3), None), "got torch.float32 (ids) and torch.float32 (kv_ids)"),
             ((torch.zeros(1, 3, dtype=torch.long), torch.rand(1, 3)),
              "got torch.int64 (ids) and torch.float32 (kv_ids)"),
             ((torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 5, dtype=torch.long)),
              "have batch 2 but for keys 3")]
    for (ids, kv_ids), message in cases:
        with pytest.raises(ValueError) as err:
            masks.document(ids, kv_ids)
        assert message in str(err.value)
    with pytest.raises(ValueError, match=r"\(1, 1, 1, 3, 3\)"):
        masks.dense(torch.ones(1, 1, 1, 3, 3, dtype=torch.bool))


def test_documents_with_other_key_ids_are_not_block_diagonal() -> None:
    ids = torch.tensor([[0, 0, 1, 1, 1, 2]])
    other = torch.tensor([[0, 1, 1, 1, 2, 2]])
    assert masks.document(ids, other).block_diagonal(6, 6) is None
    assert masks.document(ids, other).structure(6, 6).kind == "opaque"
    with pytest.raises(ValueError, match="cover 6 queries and 6 keys"):
        masks.document(ids).block_diagonal(5, 5)
