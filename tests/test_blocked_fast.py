"""The fast (fused CPU kernel) path of the ``blocked`` backend against the independent oracle.

Masks and biases are oracle definitions (``tests/oracle.py``): the code under test gets the
attnkit objects they build, the float64 oracle computes its own matrices from their meaning, so
a bug in a mask's tiles or structure cannot hide on both sides.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import oracle
from attnkit import bias, masks
from attnkit.backends import blocked_fused, cpu_flash, tuning
from attnkit.backends.blocked import BlockedBackend, TileSizes, blocked_attention
from attnkit.functional.math import validate
from conftest import float64_reference
from oracle import BiasDef, MaskDef

pytestmark = pytest.mark.skipif(not cpu_flash.fused_kernel_available(),
                                reason="this torch has no fused CPU flash kernel")


def _inputs(b: int, hq: int, hkv: int, lq: int, lk: int, d: int, dtype: torch.dtype,
            seed: int, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, lq, d, generator=gen, dtype=dtype)
    k = torch.randn(b, hkv, lk, d, generator=gen, dtype=dtype)
    v = torch.randn(b, hkv, lk, d, generator=gen, dtype=dtype)
    return tuple(t.to(device).requires_grad_() for t in (q, k, v))


def _compare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: MaskDef | None = None,
             score_bias: BiasDef | None = None, softcap: float | None = None,
             scale: float | None = None, tiles: TileSizes | None = None,
             fused: bool | None = True, atol: float = 1e-10) -> None:
    """Forward and gradients (q, k, v and the bias tensors that require grad) of blocked vs the
    float64 oracle, computed on the CPU from the definitions of ``mask`` and ``score_bias``."""
    spec = validate(q, k, v, mask=mask.build() if mask is not None else None,
                    bias=score_bias.build() if score_bias is not None else None, scale=scale,
                    softcap=softcap, dropout_p=0.0)
    out = blocked_attention(spec, tiles, fused=fused)
    bias_leaves = list(score_bias.leaves) if score_bias is not None else []
    inputs = [q, k, v, *bias_leaves]
    ref_inputs = [t.detach().cpu().double().requires_grad_(t.requires_grad) for t in inputs]
    ref, _ = float64_reference(*ref_inputs[:3], mask=mask, bias=score_bias, scale=scale,
                               softcap=softcap, bias_leaves=ref_inputs[3:])
    assert out.dtype == q.dtype
    torch.testing.assert_close(out.cpu().double(), ref.detach(), atol=atol, rtol=0)
    cotangent = torch.randn_like(ref)
    wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
    got = torch.autograd.grad(out, [inputs[i] for i in wanted],
                              cotangent.to(out.device, out.dtype))
    want = torch.autograd.grad(ref, [ref_inputs[i] for i in wanted], cotangent)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.cpu().double(), w, atol=atol * 10, rtol=0)


@st.composite
def _mask_case(draw: st.DrawFn) -> tuple[object, int, int, int]:
    b = draw(st.integers(1, 2))
    lq = draw(st.integers(1, 40))
    lk = draw(st.one_of(st.just(lq), st.integers(1, 40)))
    kind = draw(st.sampled_from(["none", "causal", "window", "window_right", "padding",
                                 "document", "doc_causal", "sink_window", "dense", "not_window"]))
    mask: MaskDef | None
    if kind == "none":
        mask = None
    elif kind == "causal":
        mask = oracle.causal()
    elif kind == "window":
        mask = oracle.window(draw(st.integers(0, 12)))
    elif kind == "window_right":
        mask = oracle.window(draw(st.integers(0, 8)), draw(st.integers(1, 8)))
    elif kind == "padding":
        mask = oracle.padding(draw(st.lists(st.integers(0, lk), min_size=b, max_size=b)))
    elif kind in ("document", "doc_causal"):
        ids = torch.sort(torch.randint(0, 4, (b, lk),
                                       generator=torch.Generator().manual_seed(lk)))[0]
        q_ids = ids[:, -lq:] if lq <= lk else torch.zeros(b, lq, dtype=torch.long)
        mask = oracle.document(q_ids, ids)
        if kind == "doc_causal":
            mask = mask & oracle.causal()
    elif kind == "sink_window":
        mask = oracle.causal() & (oracle.window(draw(st.integers(0, 6)))
                                  | oracle.sink(draw(st.integers(0, 4))))
    elif kind == "dense":
        gen = torch.Generator().manual_seed(lq * 100 + lk)
        mask = oracle.dense_mask(torch.rand(b, 1, lq, lk, generator=gen) > 0.6)
    else:
        mask = ~oracle.window(draw(st.integers(0, 6)))
    return mask, b, lq, lk


@settings(max_examples=40, deadline=None)
@given(case=_mask_case(), heads=st.sampled_from([(1, 1), (2, 2), (4, 2), (3, 1)]),
       d=st.sampled_from([3, 8, 16]), bq=st.integers(1, 9), bk=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_fused_matches_reference_float64(case, heads, d, bq, bk, seed) -> None:
    """Random masks (partial tiles, empty rows, GQA, Lq != Lk) forward and backward."""
    mask, b, lq, lk = case
    q, k, v = _inputs(b, heads[0], heads[1], lq, lk, d, torch.float64, seed)
    _compare(q, k, v, mask=mask, tiles=TileSizes(bq, bk))


@settings(max_examples=25, deadline=None)
@given(case=_mask_case(), heads=st.sampled_from([(2, 2), (4, 2)]), bq=st.integers(1, 9),
       bk=st.integers(1, 9), piece_windows=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_backward_in_pieces_matches_reference_float64(case, heads, bq, bk, piece_windows,
                                                      seed) -> None:
    """Forward and backward split each group of same-shape kernel calls into pieces (one to
    three windows here in the backward, so groups split at every offset, the last piece short)."""
    mask, b, lq, lk = case
    q, k, v = _inputs(b, heads[0], heads[1], lq, lk, 8, torch.float64, seed)
    # piece = piece_elements // (H * k_len * D); k_len <= 9 * bk here.
    elements = piece_windows * heads[0] * 8 * bk
    with tuning.override(piece_elements=elements):
        _compare(q, k, v, mask=mask, tiles=TileSizes(bq, bk))


@pytest.mark.parametrize("mask", [None, oracle.causal(), oracle.window(48),
                                  oracle.document(torch.tensor([[0] * 70 + [1] * 90 + [2] * 40]))
                                  & oracle.causal()])
def test_fused_float32_default_tiles(mask) -> None:
    """float32 at the default tile size, several query blocks batched per kernel call."""
    q, k, v = _inputs(1, 4, 2, 200, 200, 16, torch.float32, 0)
    _compare(q, k, v, mask=mask, tiles=TileSizes(16, 16), atol=2e-5)
    _compare(q, k, v, mask=mask, atol=2e-5)


@pytest.mark.parametrize("lq, lk", [(64, 64), (40, 70), (70, 40)])
@pytest.mark.parametrize("offset", [None, -5, 0, 1, 3, 20])
def test_causal_plan_at_every_alignment(lq: int, lk: int, offset: int | None) -> None:
    """Default tiles: a causal mask whose square fits runs as keys before it plus one causal
    call (offset 1: one key before it); alignments past the keys' end or with rows that see no
    key go to the tile plan. Forward and backward with a given scale."""
    q, k, v = _inputs(1, 4, 2, lq, lk, 8, torch.float64, lq + lk)
    _compare(q, k, v, mask=oracle.causal(offset), scale=0.3)


def test_a_mask_every_item_of_a_call_shares_is_built_once() -> None:
    """Items of one kernel call whose masks agree keep one (1, H|1, q, k) additive mask. Here a
    sliding window joined with padding (not a band, so the plan cannot know it in advance):
    after its first blocks, each 16-row block sees the same pattern of a 48-key range."""
    length = 128
    q, k, v = (t.detach() for t in _inputs(1, 2, 2, length, length, 8, torch.float64, 4))
    mask = oracle.window(20) & oracle.padding([length])
    spec = validate(q, k, v, mask=mask.build(), bias=None, scale=None, softcap=None,
                    dropout_p=0.0)
    plan = blocked_fused.make_plan(spec, 16, 16, by_structure=False)
    mb, groups = plan.for_batch(0)
    masked = [i for i, g in enumerate(groups) if g.first.masked]
    assert max(groups[i].n for i in masked) >= 5, groups
    for i in masked:
        additive, _ = plan.mask_of(mb, i)
        assert additive is not None and additive.shape[0] == 1, (groups[i], additive)
    _compare(q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), mask=mask,
             tiles=TileSizes(16, 16))


def _plan_items(plan: blocked_fused.FusedPlan) -> list[tuple[int, int, int, int, bool]]:
    """Every item of the plan's kernel calls (batch element 0) as (first query, query rows,
    first key, keys, masked), sorted."""
    _, groups = plan.for_batch(0)
    return sorted((g.first.q0 + i * g.first.q_len, g.first.q_len, g.first.k0 + i * g.k_step,
                   g.first.k_len, g.first.masked) for g in groups for i in range(g.n))


def test_tile_plan_splits_full_middles_and_merges_equal_rows() -> None:
    """The tile plan (8 x 8 tiles, L = 64): a run of key tiles with partial tiles only at its
    ends and at least ``min_full_tiles_to_split`` (4) full tiles between is masked ends and an
    unmasked middle; with 3 full tiles it stays one masked call; consecutive query blocks that
    see the same fully visible keys are one call."""
    q = torch.randn(1, 1, 64, 8, dtype=torch.float64)

    def items(mask: masks.Mask | None) -> list[tuple[int, int, int, int, bool]]:
        spec = validate(q, q, q, mask=mask, bias=None, scale=None, softcap=None, dropout_p=0.0)
        return _plan_items(blocked_fused.make_plan(spec, 8, 8, by_structure=False))

    assert tuning.current().min_full_tiles_to_split == 4
    # rows 48..55 see keys [8..48] .. [15..55]: tile 1 partial, tiles 2-5 full, tile 6 partial
    assert [it for it in items(masks.sliding_window(40)) if it[0] == 48] == [
        (48, 8, 8, 8, True), (48, 8, 16, 32, False), (48, 8, 48, 8, True)]
    # rows 48..55 see keys [16..48] .. [23..55]: only tiles 3-5 full
    assert [it for it in items(masks.sliding_window(32)) if it[0] == 48] == [
        (48, 8, 16, 40, True)]
    # causal: rows 48..55 see tiles 0-5 whole and the diagonal tile 6 in part
    assert [it for it in items(masks.causal()) if it[0] == 48] == [
        (48, 8, 0, 48, False), (48, 8, 48, 8, True)]
    assert items(masks.padding([40])) == [(0, 64, 0, 40, False)]
    assert items(None) == items(masks.full()) == [(0, 64, 0, 64, False)]


def test_bands_up_to_band_max_width_keys_per_row_run_as_a_band() -> None:
    q = torch.randn(1, 1, 64, 8, dtype=torch.float64)

    def band_block(mask: masks.Mask) -> int | None:
        spec = validate(q, q, q, mask=mask, bias=None, scale=None, softcap=None, dropout_p=0.0)
        with tuning.override(band_max_width=9, band_block=8):
            return blocked_fused.make_plan(spec, 16, 16).band_block

    assert band_block(masks.sliding_window(4, 4)) == 8  # 9 keys per row
    assert band_block(masks.sliding_window(5, 4)) is None  # 10 keys per row: tiles
    assert band_block(masks.sliding_window(8, 0)) == 8


def test_masked_calls_are_grouped_within_max_mask_elements() -> None:
    """Masked items of one shape run as one call while the call's additive mask stays within
    ``max_mask_elements``; a band whose keys move with its queries keeps one item's mask, so
    it is not limited; items over the same keys (step 0, here a document) group too."""
    q = torch.randn(1, 1, 128, 8, dtype=torch.float64)
    item = 16 * 48  # a 16-row block of the window's 48-key range

    def masked_calls(mask: masks.Mask) -> list[tuple[int, int, int, int]]:
        spec = validate(q, q, q, mask=mask, bias=None, scale=None, softcap=None, dropout_p=0.0)
        with tuning.override(max_mask_elements=3 * item):
            plan = blocked_fused.make_plan(spec, 16, 16, by_structure=False)
        _, groups = plan.for_batch(0)
        return [(g.n, g.k_step, g.first.q_len, g.first.k_len) for g in groups if g.first.masked]

    # window & padding is not a band: six 16 x 48 items, in calls of at most 3
    assert masked_calls(masks.sliding_window(20) & masks.padding([128]))[-2:] == [
        (3, 16, 16, 48), (3, 16, 16, 48)]
    assert masked_calls(masks.sliding_window(20))[-1] == (6, 16, 16, 48)  # the band: one call
    assert (5, 0, 16, 16) in masked_calls(masks.document(torch.tensor([[0] * 40 + [1] * 88])))


_ALTERNATING = torch.tensor([[True] * 8, [True, False, True, True, False, True, True, True]] * 4)


@pytest.mark.parametrize("mask, tiles", [
    # every tile full or empty: one unmasked run per row, one key longer each row
    (oracle.causal(), (1, 1)),
    # a fully visible row, then a partly masked one over the same keys
    (oracle.dense_mask(_ALTERNATING), (1, 4)),
], ids=["causal-1x1", "alternating-1x4"])
def test_tile_plan_keeps_rows_apart_where_they_differ(mask: MaskDef, tiles: tuple[int, int]
                                                      ) -> None:
    q, k, v = _inputs(1, 2, 2, 8, 8, 8, torch.float64, 5)
    _compare(q, k, v, mask=mask, tiles=TileSizes(*tiles))


@st.composite
def _structured_case(draw: st.DrawFn) -> tuple[object, int, int]:
    """Masks the default plan runs by structure (causal bands, packed documents) and their
    near misses, which fall back to tiles."""
    lq = draw(st.integers(1, 300))
    lk = draw(st.one_of(st.just(lq), st.integers(1, 300)))
    offset = draw(st.one_of(st.none(), st.integers(-80, 80)))
    kind = draw(st.sampled_from(["causal", "wide_window", "window", "document", "doc_causal",
                                 "doc_repeats"]))
    if kind == "causal":
        return oracle.causal(offset), lq, lk
    if kind == "wide_window":  # reaches past the first key: planned as causal
        return oracle.window(draw(st.integers(300, 400)), offset=offset), lq, lk
    if kind == "window":
        return oracle.window(draw(st.integers(1, 200)), offset=offset), lq, lk
    lengths = draw(st.lists(st.integers(1, 90), min_size=1, max_size=6))
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    if kind == "doc_repeats":  # an id that comes back later is not block diagonal
        ids = ids % 2
    ids = torch.stack([ids, ids.flip(0)])  # two batch elements with different runs
    mask = oracle.document(ids)
    return (mask & oracle.causal() if kind == "doc_causal" else mask), len(ids[0]), len(ids[0])


@settings(max_examples=40, deadline=None)
@given(case=_structured_case(), heads=st.sampled_from([(1, 1), (4, 2)]),
       seed=st.integers(0, 2**16))
def test_structured_plan_matches_reference_float64(case, heads, seed) -> None:
    """Default tiles: causal masks and packed documents run as whole causal / square calls."""
    mask, lq, lk = case
    q, k, v = _inputs(2, heads[0], heads[1], lq, lk, 8, torch.float64, seed)
    _compare(q, k, v, mask=mask)


@st.composite
def _band_case(draw: st.DrawFn) -> tuple[object, int, int]:
    """Two-sided bands (what the band plan takes) with offsets, ends that clip the first and
    last blocks, rows with no key, and an empty intersection."""
    lq = draw(st.integers(1, 60))
    lk = draw(st.one_of(st.just(lq), st.integers(1, 60)))
    offset = draw(st.one_of(st.none(), st.integers(-20, 20)))
    left, right = draw(st.integers(0, 12)), draw(st.integers(0, 12))
    mask = oracle.window(left, right, offset=offset)
    extra = draw(st.sampled_from(["none", "causal", "window"]))
    if extra == "causal":
        mask = mask & oracle.causal()
    elif extra == "window":  # may leave no key at all (lo > hi)
        mask = mask & oracle.window(draw(st.integers(0, 6)), 0,
                                    offset=draw(st.integers(-30, 30)))
    return mask, lq, lk


@settings(max_examples=50, deadline=None)
@given(case=_band_case(), heads=st.sampled_from([(1, 1), (4, 2)]), block=st.integers(1, 9),
       backward_block=st.integers(1, 9), piece_windows=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_band_plan_matches_reference_float64(case, heads, block, backward_block, piece_windows,
                                             seed) -> None:
    """Narrow two-sided bands run in blocks of band_block rows (band_block_backward in the
    backward) with exact key ranges and one shared mask (forced small here, with small pieces)
    against the float64 reference."""
    mask, lq, lk = case
    q, k, v = _inputs(2, heads[0], heads[1], lq, lk, 8, torch.float64, seed)
    with tuning.override(band_block=block, band_block_backward=backward_block,
                         piece_elements=piece_windows * heads[0] * 8 * 9):
        _compare(q, k, v, mask=mask)


def test_band_plan_calls_and_evaluates_one_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sliding window at default tiles: interior blocks of band_block rows see exactly the
    keys they reach, all with one (1, 1, q, k) mask, and the mask is evaluated for a few blocks
    only (its first interior block and the clipped ones at the ends), not for every block."""
    calls: list[tuple[tuple[int, ...], tuple[int, ...] | None]] = []
    real = cpu_flash.forward_op()

    def counting(q, k, v, *args, attn_mask=None, **kwargs):
        calls.append((tuple(q.shape), None if attn_mask is None else tuple(attn_mask.shape)))
        return real(q, k, v, *args, attn_mask=attn_mask, **kwargs)

    evaluated: list[int] = []
    window = masks.sliding_window(64, 64)
    real_allowed = type(window).allowed

    def counting_allowed(self, b, h, q, k, lq, lk):
        out = real_allowed(self, b, h, q, k, lq, lk)
        evaluated.append(torch.broadcast_shapes(q.shape, k.shape).numel())
        return out

    monkeypatch.setattr(cpu_flash, "forward_op", lambda: counting)
    monkeypatch.setattr(type(window), "allowed", counting_allowed)
    length, block, width = 4096, tuning.current().band_block, 129
    q, k, v = (t.detach() for t in _inputs(1, 2, 2, length, length, 8, torch.float32, 2))
    spec = validate(q, k, v, mask=window, bias=None, scale=None, softcap=None, dropout_p=0.0)
    out = blocked_attention(spec)
    interior = [c for c in calls if c[0][2:] == (block, 8) and c[1] == (1, 1, block,
                                                                     block + width - 1)]
    blocks_seen = sum(c[0][0] for c in calls)
    assert blocks_seen == length // block, calls
    assert sum(c[0][0] for c in interior) >= length // block - 2 * (width // block + 1), calls
    assert sum(evaluated) <= 12 * block * (block + width), sum(evaluated)
    torch.testing.assert_close(out, blocked_attention(spec, TileSizes(16, 16)), atol=2e-5,
                               rtol=0)


def test_band_backward_runs_larger_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backward of a band plan runs blocks of band_block_backward rows (the forward's
    band_block rows would write dk / dv more often), with the exact gradients."""
    rows: list[int] = []
    real = cpu_flash.backward_op()

    def counting(grad, q, *args, **kwargs):
        rows.extend([q.shape[2]] * q.shape[0])
        return real(grad, q, *args, **kwargs)

    monkeypatch.setattr(cpu_flash, "backward_op", lambda: counting)
    q, k, v = _inputs(1, 2, 2, 1024, 1024, 8, torch.float64, 3)
    for backward_block in (tuning.current().band_block_backward, 96):  # 96: not a tile size
        rows.clear()
        with tuning.override(band_block_backward=backward_block):
            _compare(q, k, v, mask=oracle.window(100, 60))
        interior = [r for r in rows if r == backward_block]
        assert backward_block != tuning.current().band_block
        assert sum(rows) == 1024 and len(interior) >= len(rows) - 4, rows


def test_structured_plan_makes_one_call_per_causal_square(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Causal: one is_causal call over the whole sequence; packed causal documents: one
    is_causal call per document length (equal lengths batched); no additive masks."""
    calls: list[tuple[int, int, bool, bool]] = []  # (items, rows, is_causal, has a mask)
    real = cpu_flash.forward_op()

    def counting(q, k, v, dropout, is_causal, *, attn_mask=None, scale=None):
        calls.append((q.shape[0], q.shape[2], is_causal, attn_mask is not None))
        return real(q, k, v, dropout, is_causal, attn_mask=attn_mask, scale=scale)

    monkeypatch.setattr(cpu_flash, "forward_op", lambda: counting)
    q, k, v = _inputs(1, 2, 2, 1024, 1024, 8, torch.float32, 2)
    _compare(q, k, v, mask=oracle.causal(), atol=2e-5)
    assert calls == [(1, 1024, True, False)]
    calls.clear()
    ids = torch.tensor([[0] * 300 + [1] * 200 + [2] * 200 + [3] * 324])
    _compare(q, k, v, mask=oracle.document(ids) & oracle.causal(), atol=2e-5)
    assert sorted(calls) == [(1, 300, True, False), (1, 324, True, False),
                             (2, 200, True, False)], calls


@pytest.mark.parametrize("lq, lk", [(0, 5), (5, 0)])
@pytest.mark.parametrize("mask", [None, masks.causal()])
def test_empty_lengths_give_empty_or_zero_outputs(lq: int, lk: int, mask: masks.Mask | None
                                                  ) -> None:
    """No queries: an empty output; no keys: zeros (every row has nothing to attend to), and
    zero gradients."""
    q, k, v = _inputs(1, 2, 2, lq, lk, 8, torch.float64, 6)
    spec = validate(q, k, v, mask=mask, bias=None, scale=None, softcap=None, dropout_p=0.0)
    out = blocked_attention(spec)
    assert torch.equal(out, torch.zeros(1, 2, lq, 8, dtype=torch.float64))
    grads = torch.autograd.grad(out.sum(), [q, k, v], allow_unused=True)
    assert all(g is None or torch.equal(g, torch.zeros_like(g)) for g in grads)


def _kernel_rows(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Record (query rows, is_causal) of every fused forward kernel call from now on."""
    calls: list[tuple[int, bool]] = []
    real = cpu_flash.forward_op()

    def counting(q, k, v, dropout, is_causal, **kwargs):
        calls.append((q.shape[2], is_causal))
        return real(q, k, v, dropout, is_causal, **kwargs)

    monkeypatch.setattr(cpu_flash, "forward_op", lambda: counting)
    return calls


@pytest.mark.parametrize("grad", [False, True])
def test_tile_sizes_reach_the_kernel_calls(grad: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default tiles: 128 query rows per item for a mask planned by tiles, one causal call for
    causal; given tiles (64 x 64): the tile plan even for causal. With and without autograd."""
    calls = _kernel_rows(monkeypatch)
    q, k, v = (t.requires_grad_(grad) for t in _inputs(1, 2, 2, 512, 512, 8, torch.float32, 7))
    sinks = masks.causal() & (masks.sliding_window(100) | masks.sink(4))
    for mask, tiles, rows, causal in ((sinks, TileSizes(), {128}, False),
                                      (masks.causal(), TileSizes(), {512}, True),
                                      (masks.causal(), TileSizes(64, 64), {64}, False)):
        calls.clear()
        spec = validate(q, k, v, mask=mask, bias=None, scale=None, softcap=None, dropout_p=0.0)
        BlockedBackend(tiles).forward(spec)
        assert {n for n, _ in calls} == rows and any(c for _, c in calls) == causal, calls


def test_blocked_backend_keeps_its_tiles_and_fused_choice(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    calls = _kernel_rows(monkeypatch)
    q, k, v = _inputs(1, 2, 2, 40, 40, 8, torch.float64, 8)
    spec = validate(q, k, v, mask=masks.sliding_window(5) & masks.padding([33]), bias=None,
                    scale=None, softcap=None, dropout_p=0.0)
    BlockedBackend(TileSizes(8, 8)).forward(spec)
    assert calls and {n for n, _ in calls} == {8}
    calls.clear()
    pure = BlockedBackend(TileSizes(8, 8), fused=False).forward(spec)
    assert calls == []  # the pure PyTorch loop
    torch.testing.assert_close(pure, float64_reference(
        q, k, v, mask=oracle.window(5) & oracle.padding([33]))[0])


def _tiles_seen(monkeypatch: pytest.MonkeyPatch, kind: type) -> list[tuple[int, int]]:
    """Record (query rows, keys) of every ``tile()`` evaluation of masks or biases of ``kind``."""
    seen: list[tuple[int, int]] = []
    real = kind.tile

    def counting(self, q_idx, k_idx, *args, **kwargs):
        seen.append((len(q_idx), len(k_idx)))
        return real(self, q_idx, k_idx, *args, **kwargs)

    monkeypatch.setattr(kind, "tile", counting)
    return seen


def test_pure_loop_visits_non_empty_tiles_and_masks_partial_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Causal, 8 x 8 tiles, L = 64, with ALiBi (evaluated on every tile visited): the 36 tiles
    on and below the diagonal are computed, only the 8 diagonal ones apply the mask."""
    mask, alibi = masks.causal(), bias.alibi(2)
    mask_tiles = _tiles_seen(monkeypatch, type(mask))
    bias_tiles = _tiles_seen(monkeypatch, type(alibi))
    q, k, v = (t.detach() for t in _inputs(2, 2, 2, 64, 64, 8, torch.float64, 9))
    spec = validate(q, k, v, mask=mask, bias=alibi, scale=None, softcap=None, dropout_p=0.0)
    out = blocked_attention(spec, TileSizes(8, 8))
    assert len(bias_tiles) == 36 and len(mask_tiles) == 8
    torch.testing.assert_close(out, float64_reference(q, k, v, mask=oracle.causal(),
                                                      bias=oracle.alibi(2))[0])


@pytest.mark.parametrize("fused", [False, True])
def test_each_row_is_stabilized_by_its_own_maximum(fused: bool) -> None:
    """Rows whose scores lie 200 apart in float32 (exp(-200) is 0 there): each row subtracts
    its own running maximum, so the low row keeps its weights."""
    q = torch.tensor([10.0, -10.0]).view(1, 1, 2, 1)
    k = torch.tensor([10.0, 9.0, 8.0]).view(1, 1, 3, 1)
    v = torch.randn(1, 1, 3, 1)
    spec = validate(q, k, v, mask=None, bias=None, scale=1.0, softcap=None, dropout_p=0.0)
    out = blocked_attention(spec, TileSizes(2, 3), fused=fused)
    want, _ = float64_reference(q, k, v, scale=1.0)
    torch.testing.assert_close(out.double(), want, atol=1e-6, rtol=1e-5)


def test_pure_loop_default_tiles_are_256_by_512(monkeypatch: pytest.MonkeyPatch) -> None:
    alibi = bias.alibi(2)
    bias_tiles = _tiles_seen(monkeypatch, type(alibi))
    q, k, v = (t.detach() for t in _inputs(1, 2, 2, 600, 600, 8, torch.float32, 10))
    spec = validate(q, k, v, mask=None, bias=alibi, scale=None, softcap=None, dropout_p=0.0)
    blocked_attention(spec)
    assert sorted(set(bias_tiles)) == [(88, 88), (88, 512), (256, 88), (256, 512)]


def test_fully_masked_rows_give_zeros_and_finite_grads() -> None:
    q, k, v = _inputs(2, 2, 2, 12, 12, 8, torch.float64, 1)
    allowed = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0)) > 0.5
    allowed[:, :, 3] = False
    allowed[1, :, 7:] = False
    mask = oracle.dense_mask(allowed) & oracle.padding([12, 9])
    _compare(q, k, v, mask=mask, tiles=TileSizes(4, 4))
    spec = validate(q, k, v, mask=masks.padding([0, 0]), bias=None, scale=None, softcap=None,
                    dropout_p=0.0)
    out = blocked_attention(spec, fused=True)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert all(torch.equal(t.grad, torch.zeros_like(t)) for t in (q, k, v))


def test_fused_path_is_used_and_batches_band_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sliding window runs as a few kernel calls over strided windows with one shared mask."""
    calls: list[tuple[tuple[int, ...], tuple[int, ...] | None]] = []
    real = cpu_flash.forward_op()

    def counting(q, k, v, *args, attn_mask=None, **kwargs):
        calls.append((tuple(q.shape), None if attn_mask is None else tuple(attn_mask.shape)))
        return real(q, k, v, *args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(cpu_flash, "forward_op", lambda: counting)
    q, k, v = (t.detach() for t in _inputs(1, 2, 2, 2048, 2048, 8, torch.float32, 2))
    spec = validate(q, k, v, mask=masks.sliding_window(256), bias=None, scale=None,
                    softcap=None, dropout_p=0.0)
    blocked_attention(spec, TileSizes(128, 128))
    assert len(calls) <= 4, calls  # 2 short leading blocks + one batched call for the rest
    batched = max(calls, key=lambda c: c[0][0])
    assert batched[0][0] >= 10 and batched[1] is not None and batched[1][0] == 1


def test_bias_and_softcap_fall_back_to_pure_tiles_with_bias_gradients() -> None:
    q, k, v = _inputs(1, 4, 2, 13, 17, 8, torch.float64, 3)
    table = torch.randn(1, 4, 13, 17, dtype=torch.float64, requires_grad=True)
    dense_bias = oracle.dense_bias(table)
    spec = validate(q, k, v, mask=masks.causal(), bias=dense_bias.build(), scale=None,
                    softcap=None, dropout_p=0.0)
    assert not blocked_fused.fused_supports(spec)
    with pytest.raises(ValueError) as err:
        blocked_attention(spec, fused=True)
    assert str(err.value) == (
        "the fused CPU path of 'blocked' needs a CPU tensor of float32 or float64, no bias, no "
        "softcap, no dropout and torch's fused CPU flash kernel; pass fused=None to fall back "
        "to the pure PyTorch tiles")
    # the pure path, with the gradient of the bias table compared too
    _compare(q, k, v, mask=oracle.causal(), score_bias=dense_bias, fused=None,
             tiles=TileSizes(4, 5))
    _compare(q, k, v, mask=oracle.window(4), score_bias=oracle.alibi(4), softcap=5.0,
             fused=None, tiles=TileSizes(4, 5))


def test_value_head_dim_differs_falls_back() -> None:
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 2, 9, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 9, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    spec = validate(q, k, v, mask=masks.causal(), bias=None, scale=None, softcap=None,
                    dropout_p=0.0)
    assert not blocked_fused.fused_supports(spec)
    out = BlockedBackend().forward(spec)
    torch.testing.assert_close(out, float64_reference(q, k, v, mask=oracle.causal())[0])


def test_float32_matches_pure_path_and_non_contiguous_inputs() -> None:
    q, k, v = (t.detach() for t in _inputs(2, 4, 4, 64, 64, 16, torch.float32, 5))
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, L, H, D) memory, as layers give
    mask = masks.causal() & masks.padding([64, 40])
    spec = validate(q, k, v, mask=mask, bias=None, scale=0.3, softcap=None, dropout_p=0.0)
    fast = blocked_attention(spec, TileSizes(16, 16), fused=True)
    slow = blocked_attention(spec, TileSizes(16, 16), fused=False)
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=0)


def test_tile_sizes_validate() -> None:
    with pytest.raises(ValueError) as err:
        TileSizes(block_q=0)
    assert str(err.value) == "TileSizes.block_q must be >= 1 or None, got 0"
    with pytest.raises(ValueError) as err:
        TileSizes(block_k=-3)
    assert str(err.value) == "TileSizes.block_k must be >= 1 or None, got -3"
    assert TileSizes(1, 1).resolved(fused=False) == (1, 1)
    assert TileSizes().resolved(fused=True) == blocked_fused_default()
    assert TileSizes().resolved(fused=False) == (256, 512)  # the documented pure-loop default
    assert TileSizes(None, 9).resolved(fused=False) == (256, 9)
    assert TileSizes(7, None).resolved(fused=True) == (7, blocked_fused_default()[1])
    assert TileSizes(7, 9).resolved(fused=False) == (7, 9)
    assert TileSizes().is_default
    assert not TileSizes(None, 9).is_default and not TileSizes(7, None).is_default


def blocked_fused_default() -> tuple[int, int]:
    return tuning.DEFAULTS.fused_block_q, tuning.DEFAULTS.fused_block_k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pure_tiles_on_cuda_match_reference() -> None:
    q, k, v = _inputs(2, 4, 2, 70, 70, 16, torch.float32, 6, device="cuda")
    for mask in (oracle.causal(), oracle.window(9), oracle.padding([70, 33])):
        _compare(q, k, v, mask=mask, fused=None, atol=2e-5)


def test_auto_keeps_blocked_on_cpu_for_masks() -> None:
    from attnkit.backends.dispatch import prefers_dense_on_gpu, report

    q, k, v = (t.detach() for t in _inputs(1, 2, 2, 64, 64, 8, torch.float32, 7))
    spec = validate(q, k, v, mask=masks.sliding_window(8), bias=None, scale=None, softcap=None,
                    dropout_p=0.0)
    assert not prefers_dense_on_gpu(spec)
    assert report(spec).chosen == "blocked"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_prefers_dense_mask_on_cuda_until_it_is_large() -> None:
    from attnkit.backends import dispatch

    q, k, v = (t.detach() for t in _inputs(1, 2, 2, 64, 64, 8, torch.float32, 8, "cuda"))
    spec = validate(q, k, v, mask=masks.sliding_window(8), bias=None, scale=None, softcap=None,
                    dropout_p=0.0)
    assert dispatch.report(spec).chosen == "sdpa_dense"
    capped = validate(q, k, v, mask=masks.sliding_window(8), bias=None, scale=None, softcap=2.0,
                      dropout_p=0.0)
    assert dispatch.report(capped).chosen == "blocked"  # sdpa_dense has no softcap
    with tuning.override(gpu_dense_mask_max_elements=64 * 64 - 1):
        assert dispatch.report(spec).chosen == "blocked"


@settings(max_examples=15, deadline=None)
@given(case=_mask_case(), heads=st.sampled_from([(2, 2), (4, 2)]), bq=st.integers(1, 9),
       bk=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_pure_tiles_match_reference_float64(case, heads, bq, bk, seed) -> None:
    """The pure PyTorch tile loop (the fallback and the CUDA path) on the same random masks."""
    mask, b, lq, lk = case
    q, k, v = _inputs(b, heads[0], heads[1], lq, lk, 8, torch.float64, seed)
    _compare(q, k, v, mask=mask, tiles=TileSizes(bq, bk), fused=False)


def test_training_memory_stays_linear_in_length() -> None:
    """Forward+backward of a sliding window at L=4096 touches far less than one score matrix."""
    from attnkit.bench.harness import PeakMemory

    if not PeakMemory.cpu_supported():
        pytest.skip("peak memory needs Linux /proc/self/clear_refs")
    q, k, v = _inputs(1, 2, 2, 4096, 4096, 16, torch.float32, 9)
    spec = validate(q, k, v, mask=masks.sliding_window(128), bias=None, scale=None,
                    softcap=None, dropout_p=0.0)
    scores_mib = 2 * 4096 * 4096 * 4 / 2**20  # one (H, L, L) float32 matrix: 128 MiB
    with PeakMemory() as mem:
        blocked_attention(spec).sum().backward()
    assert mem.mib < scores_mib / 8, mem.mib
