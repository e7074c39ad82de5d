"""Linformer (Wang et al., 2020) against a float64 transcription."""

from __future__ import annotations

import pytest
import torch

from attnkit.functional import masks
from attnkit.layers import StaticKVCache, build_attention
from kinds_reference import linear64, merge64, project64, softmax_attention64


@pytest.mark.parametrize(("share_kv", "length", "kv_heads"), [(False, 20, 4), (True, 13, 2)])
def test_linformer_matches_paper(share_kv: bool, length: int, kv_heads: int) -> None:
    layer = build_attention("linformer", dim=32, num_heads=4, num_kv_heads=kv_heads,
                            max_length=20, projected_length=5, share_kv=share_kv).double()
    x = torch.randn(2, length, 32, dtype=torch.float64)
    lengths = torch.tensor([length, length - 4])
    valid = (torch.arange(length)[None, :] < lengths[:, None]).double()[:, None, :, None]
    q, k, v = project64(layer, x, 4, kv_heads)
    e = layer.key_length_proj.double()[:, :length]
    f = e if share_kv else layer.value_length_proj.double()[:, :length]
    out = softmax_attention64(q, e @ (k * valid), f @ (v * valid))  # softmax(Q (EK)^T) FV
    expected = linear64(layer.out_proj, merge64(out))
    torch.testing.assert_close(layer(x, mask=masks.padding(lengths)), expected)


def test_linformer_refuses_causal_cache_and_long_inputs() -> None:
    layer = build_attention("linformer", dim=16, num_heads=2, max_length=8)
    x = torch.randn(1, 8, 16)
    with pytest.raises(ValueError, match="causal"):
        layer(x, mask=masks.causal())
    with pytest.raises(ValueError, match="cache"):
        layer(x, cache=StaticKVCache(8))
    with pytest.raises(ValueError, match="max_length"):
        layer(torch.randn(1, 9, 16))
    with pytest.raises(TypeError, match="max_length"):
        build_attention("linformer", dim=16, num_heads=2)
