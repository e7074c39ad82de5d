"""Explicit sparse (top-k) attention (Zhao et al., 2019) against a float64 transcription."""

from __future__ import annotations

import pytest
import torch

from attnkit.functional import masks
from attnkit.layers import build_attention
from kinds_reference import linear64, merge64, project64


def reference(layer, x: torch.Tensor, top: int, allowed: torch.Tensor | None) -> torch.Tensor:
    q, k, v = project64(layer, x, layer.layout.num_heads, layer.layout.num_kv_heads)
    p = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if allowed is not None:
        p = p.masked_fill(~allowed, float("-inf"))
    rows = p.reshape(-1, p.shape[-1])
    kept = torch.full_like(rows, float("-inf"))
    for r in range(rows.shape[0]):  # one query at a time: keep scores >= its k-th largest
        t = torch.sort(rows[r], descending=True).values[min(top, rows.shape[1]) - 1]
        keep = rows[r] >= t
        kept[r, keep] = rows[r, keep]
    weights = torch.softmax(kept.view_as(p), -1).nan_to_num(0.0)
    return linear64(layer.out_proj, merge64(weights @ v))


@pytest.mark.parametrize(("top", "chunk", "causal"), [(3, 4, False), (5, 3, True), (1, 64, False)])
def test_topk_matches_paper(top: int, chunk: int, causal: bool) -> None:
    layer = build_attention("topk", dim=24, num_heads=4, num_kv_heads=2, top_k=top,
                            chunk=chunk).double()
    x = torch.randn(2, 13, 24, dtype=torch.float64, requires_grad=True)
    allowed = torch.ones(13, 13, dtype=torch.bool).tril() if causal else None
    got = layer(x, mask=masks.causal() if causal else None)
    expected = reference(layer, x, top, allowed)
    torch.testing.assert_close(got, expected)
    # backward through the checkpointed chunks equals autograd of the transcription
    g = torch.randn_like(got)
    (grad_got,) = torch.autograd.grad(got, x, g)
    (grad_ref,) = torch.autograd.grad(expected, x, g)
    torch.testing.assert_close(grad_got, grad_ref)


def test_k_at_least_length_is_exact_attention() -> None:
    layer = build_attention("topk", dim=16, num_heads=2, top_k=40, chunk=7).double()
    mha = build_attention("mha", dim=16, num_heads=2).double()
    mha.load_state_dict(layer.state_dict())
    x = torch.randn(2, 25, 16, dtype=torch.float64)
    pad = masks.padding(torch.tensor([25, 9]))
    torch.testing.assert_close(layer(x, mask=pad), mha(x, mask=pad))


def test_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="top_k"):
        build_attention("topk", dim=16, num_heads=2, top_k=0)
    with pytest.raises(ValueError, match="softcap"):
        build_attention("topk", dim=16, num_heads=2, softcap=5.0)
