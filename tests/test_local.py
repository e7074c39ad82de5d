"""Local (sliding-window) attention against a float64 transcription."""

from __future__ import annotations

import pytest
import torch

from attnkit.functional import masks
from attnkit.layers import RollingKVCache, build_attention
from kinds_reference import linear64, merge64, project64, softmax_attention64


@pytest.mark.parametrize(("window", "lookahead", "causal"), [(2, None, False), (3, 0, False),
                                                             (4, None, True)])
def test_local_matches_band_formula(window: int, lookahead: int | None, causal: bool) -> None:
    layer = build_attention("local", dim=16, num_heads=2, window=window,
                            lookahead=lookahead).double()
    x = torch.randn(2, 15, 16, dtype=torch.float64)
    i = torch.arange(15)
    rel = i[None, :] - i[:, None]  # key minus query
    ahead = window if lookahead is None else lookahead
    allowed = (rel >= -window) & (rel <= (0 if causal else ahead))
    q, k, v = project64(layer, x, 2, 2)
    expected = linear64(layer.out_proj, merge64(softmax_attention64(q, k, v, allowed)))
    torch.testing.assert_close(layer(x, mask=masks.causal() if causal else None), expected)


def test_local_decodes_with_a_rolling_cache() -> None:
    layer = build_attention("local", dim=16, num_heads=2, window=3).double()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    cache = RollingKVCache(window=4, sink=0)  # the current token plus 3 before it
    steps = [layer(x[:, i:i + 1], cache=cache) for i in range(12)]
    torch.testing.assert_close(torch.cat(steps, 1), layer(x, mask=masks.causal()))


def test_local_rejects_negative_window() -> None:
    with pytest.raises(ValueError, match="window"):
        build_attention("local", dim=16, num_heads=2, window=-1)
