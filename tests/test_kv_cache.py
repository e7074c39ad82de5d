"""KV caches: the caches' own bookkeeping, and decoding with them equals the full forward pass.

Shape legend: B batch, Hkv key/value heads, L tokens, D head dim.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from attnkit import masks
from attnkit.layers import MultiHeadAttention, RollingKVCache, StaticKVCache
from conftest import cuda_only


def kv(length: int, b: int = 2, h: int = 2, d: int = 3) -> tuple[Tensor, Tensor]:
    return torch.randn(b, h, length, d), torch.randn(b, h, length, d + 1)


def test_static_cache_appends_in_place() -> None:
    cache = StaticKVCache(6)
    k1, v1 = kv(2)
    k2, v2 = kv(3)
    keys, values, extra = cache.update(k1, v1)
    assert extra is None and cache.position == 2
    assert torch.equal(keys, k1) and torch.equal(values, v1)
    keys, values, _ = cache.update(k2, v2)
    assert cache.position == 5
    assert torch.equal(keys, torch.cat([k1, k2], 2)) and torch.equal(values, torch.cat([v1, v2], 2))
    assert cache.keys is not None and cache.keys.shape == (2, 2, 6, 3)  # preallocated
    cache.reset()
    assert cache.position == 0
    keys, _, _ = cache.update(k2, v2)
    assert torch.equal(keys, k2)


def test_static_cache_overflow_and_bad_size() -> None:
    cache = StaticKVCache(4)
    cache.update(*kv(3))
    with pytest.raises(ValueError, match="holds 4 positions; 3 are used and 2 more were given"):
        cache.update(*kv(2))
    assert cache.position == 3, "a refused update leaves the cache as it was"
    with pytest.raises(ValueError, match="max_length must be >= 1, got 0"):
        StaticKVCache(0)
    with pytest.raises(ValueError, match=r"new keys have shape \(1, 2, 1, 3\) but the cache "
                                         r"holds \(2, 2, 4, 3\)"):
        cache.update(*kv(1, b=1))


@pytest.mark.parametrize("window, sink", [(3, 2), (1, 0), (4, 1), (2, 5)])
def test_rolling_cache_masks_and_memory(window: int, sink: int) -> None:
    cache = RollingKVCache(window, sink)
    all_k, all_v = kv(15)
    for t in range(15):
        keys, values, extra = cache.update(all_k[:, :, t:t + 1], all_v[:, :, t:t + 1])
        assert extra is not None
        allowed = extra.dense(1, keys.shape[2])[0, 0, 0]
        # the keys it may attend to are exactly the sinks and the last `window` tokens
        visible = [p for p in range(t + 1) if p < sink or t - p < window]
        # it returns what it kept after the previous step, plus the new token
        kept_before = [p for p in range(t) if p < sink or p > t - 1 - window]
        assert keys.shape[2] == len(kept_before) + 1
        got = torch.stack([keys[:, :, i] for i in range(keys.shape[2]) if allowed[i]], 2)
        assert torch.equal(got, all_k[:, :, visible])
        vals = torch.stack([values[:, :, i] for i in range(values.shape[2]) if allowed[i]], 2)
        assert torch.equal(vals, all_v[:, :, visible])
        assert cache.keys is not None and cache.keys.shape[2] <= sink + window + 1
    assert cache.position == 15
    cache.reset()
    assert cache.position == 0 and cache.keys is None


def test_rolling_cache_equivalent_mask() -> None:
    cache = RollingKVCache(3, sink=2)
    allowed = cache.equivalent_mask().dense(8, 8)[0, 0]
    i, j = torch.arange(8)[:, None], torch.arange(8)[None, :]
    assert torch.equal(allowed, (j <= i) & ((i - j < 3) | (j < 2)))
    with pytest.raises(ValueError, match="window=0, sink=1"):
        RollingKVCache(0, 1)
    with pytest.raises(ValueError, match="window=2, sink=-1"):
        RollingKVCache(2, -1)


DECODE_CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "gqa_rope": {"num_kv_heads": 2, "rope": True},
    "mqa_qk_norm": {"num_kv_heads": 1, "qk_norm": True},
    "alibi_softcap": {"alibi": True, "softcap": 4.0},
}


def _layer(options: dict[str, Any]) -> MultiHeadAttention:
    return MultiHeadAttention(16, 4, **options).double().eval()


@pytest.mark.parametrize("name", list(DECODE_CONFIGS))
@pytest.mark.parametrize("prefill", [0, 1, 4])
def test_static_cache_decoding_equals_full_causal_forward(name: str, prefill: int) -> None:
    layer = _layer(DECODE_CONFIGS[name])
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    full = layer(x, mask=masks.causal())
    cache = StaticKVCache(9)
    steps = []
    if prefill:
        steps.append(layer(x[:, :prefill], mask=masks.causal(), cache=cache))
    for t in range(prefill, 9):
        steps.append(layer(x[:, t:t + 1], cache=cache))  # one query: it may see the whole cache
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-8)
    assert cache.position == 9
    with pytest.raises(ValueError, match="holds 9 positions; 9 are used and 1 more"):
        layer(x[:, :1], cache=cache)


def test_static_cache_decoding_in_chunks() -> None:
    """Chunks of several tokens need the causal mask, aligned bottom-right on the cache."""
    layer = _layer(DECODE_CONFIGS["gqa_rope"])
    x = torch.randn(1, 10, 16, dtype=torch.float64)
    full = layer(x, mask=masks.causal())
    cache = StaticKVCache(16)
    chunks = [layer(x[:, a:b], mask=masks.causal(), cache=cache)
              for a, b in [(0, 3), (3, 4), (4, 8), (8, 10)]]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("window, sink", [(3, 2), (4, 0), (1, 1)])
@pytest.mark.parametrize("name", ["plain", "gqa_rope", "mqa_qk_norm", "alibi_softcap"])
@pytest.mark.parametrize("prefill", [0, 5])
def test_rolling_cache_decoding_equals_its_equivalent_mask(window: int, sink: int, name: str,
                                                           prefill: int) -> None:
    layer = _layer(DECODE_CONFIGS[name])
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    cache = RollingKVCache(window, sink)
    full = layer(x, mask=cache.equivalent_mask())
    steps = []
    if prefill:
        steps.append(layer(x[:, :prefill], mask=masks.causal(), cache=cache))
    for t in range(prefill, 12):
        steps.append(layer(x[:, t:t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-8)
    assert cache.keys is not None and cache.keys.shape[2] <= window + sink + 1


def _user_masks(kind: str, length: int) -> tuple[masks.Mask, Any]:
    """A user mask over the whole sequence, and for a decoding step the same mask restricted to
    the step's query positions (L,) and the key positions (S,) the cache will attend to."""
    generator = torch.Generator().manual_seed(5)
    if kind == "padding":  # key positions 1 and 6 of row 0 and 0 of row 1 are pads
        real = torch.ones(2, length, dtype=torch.bool)
        real[0, [1, 6]] = False
        real[1, 0] = False
        return masks.padding(real), lambda queries, keys: masks.padding(real[:, keys])
    allowed = torch.rand(2, 1, length, length, generator=generator) < 0.7  # (B, 1, L, L)
    return masks.dense(allowed), lambda queries, keys: masks.dense(allowed[..., queries, :][
        ..., keys])


@pytest.mark.parametrize("kind", ["padding", "dense"])
@pytest.mark.parametrize("name", ["gqa_rope", "alibi_softcap"])
@pytest.mark.parametrize("prefill", [0, 5])
def test_rolling_cache_keeps_the_user_mask(kind: str, name: str, prefill: int) -> None:
    """A mask passed with a rolling cache is combined with the cache's own: decoding equals the
    full pass under (user mask & equivalent_mask()), for masks that remove keys the window and
    the sinks would keep (pads among the sinks and in the window, random dense masks)."""
    layer = _layer(DECODE_CONFIGS[name])
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    cache = RollingKVCache(3, sink=2)
    full_mask, step_mask = _user_masks(kind, 12)
    full = layer(x, mask=full_mask & cache.equivalent_mask())
    steps = []
    for start, stop in ([(0, prefill)] if prefill else []) + [(t, t + 1)
                                                             for t in range(prefill, 12)]:
        queries = torch.arange(start, stop)
        keys = torch.cat([cache.key_positions, queries])  # what the update will attend to
        steps.append(layer(x[:, start:stop], mask=step_mask(queries, keys), cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-8)
    # the user mask mattered: without it, the same decoding gives other outputs
    cache.reset()
    unmasked = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(12)], 1)
    assert not torch.allclose(unmasked, full)


def test_rolling_cache_differs_from_full_attention() -> None:
    """The window really drops tokens: the streaming output is not the full causal output."""
    layer = _layer({})
    x = torch.randn(1, 10, 16, dtype=torch.float64)
    cache = RollingKVCache(2, sink=1)
    streamed = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(10)], 1)
    full = layer(x, mask=masks.causal())
    torch.testing.assert_close(streamed[:, :3], full[:, :3])
    assert not torch.allclose(streamed[:, 3:], full[:, 3:])


def test_rolling_alibi_uses_the_kept_positions() -> None:
    """After eviction the slot index is not the distance: ALiBi comes from the kept positions
    (slot distances would shrink the sinks' distance from 8 to 3 here)."""
    layer = _layer({"alibi": True})
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    cache = RollingKVCache(2, sink=2)
    streamed = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(9)], 1)
    # sinks 0, 1; the window's previous key 7 and the new 8; 6 is still held but masked
    assert cache.attended_positions.tolist() == [0, 1, 6, 7, 8]
    full = layer(x, mask=cache.equivalent_mask())
    torch.testing.assert_close(streamed, full, atol=1e-10, rtol=1e-8)


def test_static_cache_pads_mask_and_shift_positions() -> None:
    """Left-padded rows: pad slots are masked and positions count from each row's first token."""
    cache = StaticKVCache(6)
    cache.pads = torch.tensor([0, 2])
    assert cache.query_positions(4).tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]
    _, _, extra = cache.update(*kv(4))
    assert extra is not None
    assert extra.dense(4, 4)[:, 0, 0].tolist() == [[True] * 4, [False, False, True, True]]
    assert cache.query_positions(1).tolist() == [[4], [2]]


def test_cache_misuse_errors() -> None:
    layer = _layer({"alibi": True})
    x = torch.randn(1, 3, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^a KV cache is for self-attention; cross-attention "
                                         r"keys come from the fixed context, so call without "
                                         r"cache$"):
        layer(x, x, cache=StaticKVCache(8))


@pytest.mark.cuda
@cuda_only
def test_rolling_cache_decoding_on_cuda() -> None:
    layer = MultiHeadAttention(32, 4, num_kv_heads=2, rope=True).double().eval().cuda()
    x = torch.randn(2, 12, 32, dtype=torch.float64, device="cuda")
    cache = RollingKVCache(3, sink=2)
    full = layer(x, mask=cache.equivalent_mask())
    steps = [layer(x[:, :4], mask=masks.causal(), cache=cache)]
    steps += [layer(x[:, t:t + 1], cache=cache) for t in range(4, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-8)


def test_cache_edges_one_position_values_shape_and_defaults() -> None:
    """A one-position cache works; a values-only shape mismatch names the values; the rolling
    cache keeps 4 sink tokens by default and integer positions."""
    tiny = StaticKVCache(1)
    k, v = kv(1)
    keys, values, extra = tiny.update(k, v)
    assert torch.equal(keys, k) and torch.equal(values, v) and extra is None
    cache = StaticKVCache(4)
    k, v = kv(1)
    cache.update(k, v)
    with pytest.raises(ValueError, match=r"new values have shape \(2, 2, 1, 5\) but the cache "
                                         r"holds \(2, 2, 4, 4\)"):
        cache.update(k, torch.randn(2, 2, 1, 5))
    rolling = RollingKVCache(window=3)
    assert rolling.sink == 4
    rolling.update(*kv(6))
    assert rolling.key_positions.dtype == torch.long
    # sinks 0-3 and the window of the last 3 (3, 4, 5) stay: 0..5 all kept
    assert rolling.key_positions.tolist() == [0, 1, 2, 3, 4, 5]
    rolling.update(*kv(3))
    assert rolling.key_positions.tolist() == [0, 1, 2, 3, 6, 7, 8]


def test_caches_build_their_tensors_on_the_device_of_the_keys() -> None:
    """Positions, pad masks and the rolling mask follow the device asked for / of the keys
    (the meta device stands in for a GPU: a CPU tensor meeting a meta one raises)."""
    meta = torch.device("meta")
    k, v = (t.to(meta) for t in kv(4))
    static = StaticKVCache(6)
    assert static.query_positions(2, meta).device == meta
    static.pads = torch.tensor([0, 2])  # pads may stay on the CPU
    assert static.query_positions(4, meta).device == meta
    _, _, extra = static.update(k, v)  # its pad mask is built beside the keys
    assert isinstance(extra, masks.Mask) and extra.batch_size == 2
    rolling = RollingKVCache(3, sink=1)
    assert rolling.query_positions(2, meta).device == meta
    _, _, allowed = rolling.update(k, v)
    assert allowed.tensor.device == meta  # type: ignore[union-attr]


def test_rolling_cache_attends_to_no_position_before_its_first_update() -> None:
    cache = RollingKVCache(3, sink=1)
    for _ in range(2):  # built, then reset after an update
        assert cache.attended_positions.dtype == torch.long
        assert cache.attended_positions.shape == (0,)
        cache.update(*kv(5))
        assert cache.attended_positions.tolist() == [0, 1, 2, 3, 4]
        cache.reset()


@pytest.mark.parametrize("make", [lambda: StaticKVCache(8), lambda: RollingKVCache(3, sink=1)])
def test_reorder_keeps_the_chosen_rows_in_order(make: Any) -> None:
    """Beam search: reorder(index) keeps batch rows ``index`` (repeats allowed) of keys and
    values; before the first update there is nothing to reorder."""
    cache = make()
    cache.reorder(torch.tensor([1, 0]))  # nothing held yet: a no-op
    k, v = kv(5, b=3)
    cache.update(k, v)
    index = torch.tensor([2, 0, 2])
    held_k, held_v = cache.keys.clone(), cache.values.clone()
    cache.reorder(index)
    # a static cache's slots past the 5 written ones are uninitialized memory (maybe NaN)
    written = slice(0, min(5, held_k.shape[2]))
    assert torch.equal(cache.keys[:, :, written], held_k[index][:, :, written])
    assert torch.equal(cache.values[:, :, written], held_v[index][:, :, written])
    assert cache.keys.shape == held_k[index].shape
    k2, v2 = kv(1, b=3)
    keys, values, _ = cache.update(k2, v2)  # later tokens append to the reordered rows
    assert torch.equal(keys[:, :, -1:], k2) and torch.equal(values[:, :, -1:], v2)
    assert torch.equal(keys[:, :, :held_k.shape[2]][:, :, :1], held_k[index][:, :, :1])
