"""Rollout, flow, gradient relevance and input×gradient against hand-computed values."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from attnkit.explain import (
    attention_flow,
    attention_rollout,
    gradient_relevance,
    input_x_gradient,
)
from attnkit.explain.relevance import RelevanceStep, relevance_from_steps
from attnkit.explain.toy import ToyClassifier, ToySeq2Seq
from attnkit.layers import MultiHeadAttention


def as_weights(*rows_per_head: list[list[float]]) -> Tensor:
    """Heads given as nested lists -> (1, H, L, L)."""
    return torch.tensor(rows_per_head, dtype=torch.float32)[None]


# ---------------------------------------------------------------- rollout


def test_rollout_two_layers_by_hand() -> None:
    a1 = as_weights([[1.0, 0.0], [0.5, 0.5]])
    a2 = as_weights([[0.2, 0.8], [0.0, 1.0]])
    # Ã1 = [[1, 0], [.25, .75]], Ã2 = [[.6, .4], [0, 1]], R = Ã2 @ Ã1
    want = torch.tensor([[[0.7, 0.3], [0.25, 0.75]]])
    torch.testing.assert_close(attention_rollout([a1, a2], causal_normalize=False), want)
    steps = attention_rollout([a1, a2], cumulative=True, causal_normalize=False)
    torch.testing.assert_close(steps[0], torch.tensor([[[1.0, 0.0], [0.25, 0.75]]]))


def test_rollout_head_fusions_by_hand() -> None:
    heads = as_weights([[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]])
    third = torch.tensor([[[2 / 3, 1 / 3], [1 / 3, 2 / 3]]])
    torch.testing.assert_close(attention_rollout([heads], head_fusion="max"), third)
    # min fuses to zeros: only the residual identity remains
    torch.testing.assert_close(attention_rollout([heads], head_fusion="min"),
                               torch.eye(2)[None])
    # mean fuses to 0.5 everywhere: 0.25 + 0.5 on the diagonal -> rows [.75, .25]
    torch.testing.assert_close(attention_rollout([heads], head_fusion="mean"),
                               torch.tensor([[[0.75, 0.25], [0.25, 0.75]]]))
    with pytest.raises(ValueError, match="head fusion"):
        attention_rollout([heads], head_fusion="median")


def test_rollout_discard_ratio_drops_smallest_entries_but_keeps_diagonal() -> None:
    a = as_weights([[0.1, 0.6, 0.3], [0.5, 0.05, 0.45], [0.2, 0.7, 0.1]])
    # 6 off-diagonal entries, ratio .34 -> the 2 smallest off-diagonal (0.2, 0.3) dropped; the
    # smaller diagonal entries (0.1, 0.05, 0.1) are never candidates.
    out = attention_rollout([a], discard_ratio=0.34, causal_normalize=False)
    fused = torch.tensor([[0.1, 0.6, 0.0], [0.5, 0.05, 0.45], [0.0, 0.7, 0.1]])
    want = 0.5 * fused + 0.5 * torch.eye(3)
    want = want / want.sum(-1, keepdim=True)
    torch.testing.assert_close(out[0], want)


def test_rollout_causal_normalization_makes_uniform_attention_uniform() -> None:
    length = 5
    uniform = torch.tril(torch.ones(length, length))
    uniform = (uniform / uniform.sum(-1, keepdim=True))[None, None]
    raw = attention_rollout([uniform, uniform], causal_normalize=False)[0]
    assert raw[-1, 0] > raw[-1, -2]  # structural bias towards early tokens
    normalized = attention_rollout([uniform, uniform])[0]  # causal detected
    want = torch.tril(torch.ones(length, length))
    torch.testing.assert_close(normalized, want / want.sum(-1, keepdim=True))


def test_rollout_rejects_mixed_shapes() -> None:
    with pytest.raises(ValueError, match="square self-attention"):
        attention_rollout([torch.rand(1, 1, 2, 2), torch.rand(1, 1, 3, 3)])


# ---------------------------------------------------------------- flow


def test_flow_one_layer_is_the_residual_attention() -> None:
    a = as_weights([[0.3, 0.7], [0.4, 0.6]])
    flows = attention_flow([a], normalize=False)
    torch.testing.assert_close(flows[0], 0.5 * a[0, 0] + 0.5 * torch.eye(2))


def test_flow_two_layers_against_hand_max_flow() -> None:
    a1 = as_weights([[0.9, 0.1], [0.2, 0.8]])
    a2 = as_weights([[0.4, 0.6], [0.3, 0.7]])
    t1 = 0.5 * a1[0, 0] + 0.5 * torch.eye(2)  # [[.95, .05], [.1, .9]]
    t2 = 0.5 * a2[0, 0] + 0.5 * torch.eye(2)  # [[.7, .3], [.15, .85]]
    flows = attention_flow([a1, a2], normalize=False, output_positions=[0])
    # output 0 -> input 0: via node 0 min(.7, .95) + via node 1 min(.3, .1)
    # output 0 -> input 1: via node 0 min(.7, .05) + via node 1 min(.3, .9)
    want = torch.tensor([[min(t2[0, 0], t1[0, 0]) + min(t2[0, 1], t1[1, 0]),
                          min(t2[0, 0], t1[0, 1]) + min(t2[0, 1], t1[1, 1])]])
    torch.testing.assert_close(flows[0], want)


def test_flow_refuses_long_inputs_clearly() -> None:
    with pytest.raises(ValueError, match="exceed the limit of 64"):
        attention_flow([torch.rand(1, 1, 65, 65)])


# ---------------------------------------------------------------- relevance


def chefer_transcription(steps: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Chefer et al. 2021 rules written out per example with numpy (independent of the library).

    Returns the final R_ss, R_tt, R_ts for example 0.
    """
    def cam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
        return np.maximum(a * g, 0).mean(axis=0)

    def bar(r: np.ndarray) -> np.ndarray:
        n = r.shape[0]
        out = r - np.eye(n)
        sums = out.sum(axis=1, keepdims=True)
        sums[sums == 0] = 1
        return out / sums + np.eye(n)

    r_ss = r_tt = r_ts = None
    for kind, a, g in steps:
        c = cam(a[0], g[0])
        if kind == "source":
            r_ss = np.eye(c.shape[0]) if r_ss is None else r_ss
            r_ss = r_ss + c @ r_ss
        elif kind == "target":
            r_tt = np.eye(c.shape[0]) if r_tt is None else r_tt
            if r_ts is not None:
                r_ts = r_ts + c @ r_ts
            r_tt = r_tt + c @ r_tt
        else:
            r_ts = np.zeros(c.shape) if r_ts is None else r_ts
            r_ts = r_ts + bar(r_tt).T @ c @ bar(r_ss)
    return {"ss": r_ss, "tt": r_tt, "ts": r_ts}


class ExplicitAttention(nn.Module):
    """Float64 stand-in for a MultiHeadAttention: A is an explicit tensor that keeps its grad."""

    def __init__(self, layer: MultiHeadAttention, log: list[tuple[str, Tensor]]) -> None:
        super().__init__()
        self.layer, self.log = layer, log

    def forward(self, x: Tensor, context: Tensor | None = None, *, mask: Any = None,
                cache: Any = None) -> Tensor:
        lay, src = self.layer.layout, x if context is None else context

        def heads(t: Tensor) -> Tensor:
            return t.view(t.shape[0], t.shape[1], lay.num_heads, -1).transpose(1, 2)

        q, k = heads(self.layer.q_proj(x)), heads(self.layer.k_proj(src))
        v = heads(self.layer.v_proj(src))
        scores = q @ k.transpose(-1, -2) / math.sqrt(lay.head_dim)
        if mask is not None:
            allowed = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
        a = torch.softmax(scores, dim=-1)
        a.retain_grad()
        self.log.append(("cross" if context is not None else "self", a))
        out = (a @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.layer.out_proj(out)


def explicit_steps(model: nn.Module, *inputs: Tensor) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """("self" | "cross", A, dA) for example 0 of a float64 twin with explicit weights."""
    twin = copy.deepcopy(model).double()
    log: list[tuple[str, Tensor]] = []
    for module in list(twin.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, MultiHeadAttention):
                setattr(module, child_name, ExplicitAttention(child, log))
    logits = twin(*inputs)
    logits = logits[:, -1] if logits.dim() == 3 else logits
    logits[0, int(logits[0].argmax())].backward()
    steps = []
    for kind, a in log:
        assert a.grad is not None
        steps.append((kind, a.detach().numpy(), a.grad.numpy()))
    return steps


def test_relevance_classifier_matches_transcription() -> None:
    model = ToyClassifier(depth=3, heads=2).eval()
    tokens = torch.randint(0, 20, (1, 6))
    got = gradient_relevance(model, tokens)
    steps = [("source", a, g) for _, a, g in explicit_steps(model, tokens)]
    want = chefer_transcription(steps)
    np.testing.assert_allclose(got.source[0].double().numpy(), want["ss"], atol=1e-5, rtol=1e-4)
    assert got.target is None and got.cross is None
    assert len(got.history) == 3


def test_relevance_seq2seq_matches_transcription() -> None:
    model = ToySeq2Seq(depth=2).eval()
    source, target = torch.randint(0, 20, (1, 5)), torch.randint(0, 20, (1, 4))
    got = gradient_relevance(model, source, target)
    # call order: encoder self x 2, then decoder (self, cross) x 2
    kinds = ["source", "source", "target", "cross", "target", "cross"]
    steps = [(k, a, g) for k, (logged, a, g) in
             zip(kinds, explicit_steps(model, source, target), strict=True)]
    assert [k for k, _, _ in steps if k == "cross"] == ["cross", "cross"]
    want = chefer_transcription(steps)
    assert got.target is not None and got.cross is not None
    for ours, theirs in ((got.source, want["ss"]), (got.target, want["tt"]),
                         (got.cross, want["ts"])):
        np.testing.assert_allclose(ours[0].double().numpy(), theirs, atol=1e-5, rtol=1e-4)


def test_relevance_rules_on_a_hand_example() -> None:
    # one head, one self layer: Ā = (A ⊙ G)^+, R = I + Ā
    a = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]]]])
    g = torch.tensor([[[[2.0, -1.0], [1.0, 1.0]]]])
    out = relevance_from_steps([RelevanceStep("source", a, g)])
    torch.testing.assert_close(out.source[0], torch.tensor([[2.0, 0.0], [0.2, 1.8]]))


def test_relevance_needs_gradients() -> None:
    model = ToyClassifier().eval().requires_grad_(False)
    with pytest.raises(ValueError, match="require gradients"):
        gradient_relevance(model, torch.randint(0, 20, (1, 4)))


# ---------------------------------------------------------------- input x gradient


def test_input_x_gradient_float_and_tokens() -> None:
    linear = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    got = input_x_gradient(linear, x, target=1)
    torch.testing.assert_close(got, x * linear.weight[1].detach())

    class BagOfTokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.head = nn.Embedding(10, 4), nn.Linear(4, 3)

        def forward(self, t: Tensor) -> Tensor:
            return self.head(self.embed(t).sum(1))

    bag = BagOfTokens()
    tokens = torch.tensor([[1, 5, 7]])
    got = input_x_gradient(bag, tokens, target=2)
    want = (bag.embed.weight[tokens[0]] * bag.head.weight[2]).sum(-1).detach()[None]
    torch.testing.assert_close(got, want)


# -- rollout pieces by value (survivors of mutating explain/rollout.py) ---------------------------
def test_is_causal_reads_only_the_strict_upper_triangle() -> None:
    from attnkit.explain.rollout import is_causal

    lower = torch.tril(torch.rand(2, 3, 4, 4)) + 0.1 * torch.eye(4)
    assert is_causal(lower)
    above = lower.clone()
    above[1, 2, 0, 3] = 1e-3  # one entry above the diagonal, in one map
    assert not is_causal(above)
    assert is_causal(above, tol=1e-2) and not is_causal(above, tol=1e-4)
    negative = lower.clone()
    negative[0, 0, 1, 2] = -1e-3  # magnitude counts, not sign
    assert not is_causal(negative)
    assert not is_causal(torch.tril(torch.rand(1, 1, 3, 5)))  # not square: cross-attention
    assert not is_causal(torch.ones(1, 1, 1, 1))  # one token: nothing to tell
    assert is_causal(torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]]))  # two tokens already tell
    # fused maps (B, L, L) and single maps (L, L) too
    assert is_causal(torch.tril(torch.rand(2, 4, 4))) and is_causal(torch.tril(torch.rand(3, 3)))
    assert not is_causal(torch.tril(torch.rand(2, 3, 5)))  # (B, Lq, Lk): not square


def test_causal_receptive_baseline_equals_uniform_causal_rollout() -> None:
    """Three tokens, uniform causal attention, residual 0.5: each layer's matrix by hand."""
    from attnkit.explain.rollout import causal_receptive_baseline

    step = torch.tensor([[1.0, 0.0, 0.0],  # 0.5 * uniform row + 0.5 * identity row
                         [0.25, 0.75, 0.0],
                         [1 / 6, 1 / 6, 2 / 3]], dtype=torch.float64)
    for layers in (1, 2, 3):
        want = torch.linalg.matrix_power(step, layers)
        got = causal_receptive_baseline(3, layers, dtype=torch.float64)
        torch.testing.assert_close(got, want)
    assert causal_receptive_baseline(3, 2).dtype == torch.float32
    # residual weight 0.2: 0.8 * uniform + 0.2 * identity
    got = causal_receptive_baseline(2, 1, residual_weight=0.2, dtype=torch.float64)
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.0], [0.4, 0.6]], dtype=torch.float64))


def test_discard_ratio_zeroes_the_smallest_off_diagonal_entries() -> None:
    """L = 3 has 6 off-diagonal entries; ratio 0.5 zeroes the 3 smallest (never the diagonal,
    however small) before the rows are renormalized."""
    fused = torch.tensor([[0.01, 0.5, 0.2],
                          [0.3, 0.02, 0.05],
                          [0.1, 0.6, 0.03]])
    weights = fused[None, None]  # (B=1, H=1, 3, 3)
    kept = torch.tensor([[0.01, 0.5, 0.0],
                         [0.3, 0.02, 0.0],
                         [0.0, 0.6, 0.03]])  # 0.05, 0.1 and 0.2 are the smallest off-diagonal
    want = kept / kept.sum(-1, keepdim=True)
    got = attention_rollout([weights], discard_ratio=0.5, residual_weight=0.0,
                            causal_normalize=False)
    torch.testing.assert_close(got[0], want)
    # a ratio too small to discard one entry changes nothing
    same = attention_rollout([weights], discard_ratio=0.1, residual_weight=0.0,
                             causal_normalize=False)
    torch.testing.assert_close(same[0], fused / fused.sum(-1, keepdim=True))
    # ratio 0.2 discards exactly one entry, per map of a batch of two
    batch = torch.stack([fused, fused.T])[:, None]  # (B=2, H=1, 3, 3)
    one = attention_rollout([batch], discard_ratio=0.2, residual_weight=0.0,
                            causal_normalize=False)
    for b, smallest in ((0, (1, 2)), (1, (2, 1))):  # 0.05, where each map holds it
        kept = batch[b, 0].clone()
        kept[smallest] = 0.0
        torch.testing.assert_close(one[b], kept / kept.sum(-1, keepdim=True))


def test_rollout_option_checks_name_the_values() -> None:
    w = torch.softmax(torch.randn(1, 2, 4, 4), -1)
    with pytest.raises(ValueError, match=r"^attention_rollout needs at least one layer of "
                                         r"weights$"):
        attention_rollout([])
    with pytest.raises(ValueError, match=r"discard_ratio must be in \[0, 1\), got 1.0"):
        attention_rollout([w], discard_ratio=1.0)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"residual_weight must be in \[0, 1\], got {bad}"):
            attention_rollout([w], residual_weight=bad)
    for edge in (0.0, 1.0):  # both ends are allowed; 1 is the identity (attention ignored)
        attention_rollout([w], residual_weight=edge)
    torch.testing.assert_close(attention_rollout([w], residual_weight=1.0)[0], torch.eye(4))


def test_causal_normalize_by_value_and_auto_detection() -> None:
    """Rollout divided by the uniform-causal rollout of the same residual weight, rows
    renormalized; detected as causal despite float noise of 1e-8 above the diagonal; forced on
    non-causal maps, positions outside the causal receptive field get 0."""
    g = torch.Generator().manual_seed(0)
    length, residual = 4, 0.3
    lower = torch.tril(torch.rand(2, 3, length, length, generator=g, dtype=torch.float64))
    layers = [lower / lower.sum(-1, keepdim=True) for _ in range(2)]
    plain = torch.eye(length, dtype=torch.float64)
    for w in layers:
        a = (1 - residual) * w.mean(1) + residual * torch.eye(length, dtype=torch.float64)
        plain = (a / a.sum(-1, keepdim=True)) @ plain
    uniform = torch.tril(torch.ones(length, length, dtype=torch.float64))
    uniform = (1 - residual) * uniform / uniform.sum(-1, keepdim=True) + residual * torch.eye(
        length, dtype=torch.float64)
    base = torch.linalg.matrix_power(uniform / uniform.sum(-1, keepdim=True), 2)
    ratio = torch.where(base > 0, plain / base, torch.zeros_like(plain))
    want = ratio / ratio.sum(-1, keepdim=True)
    got = attention_rollout(layers, residual_weight=residual, causal_normalize=True)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5)
    noisy = [w + 1e-8 * torch.triu(torch.ones(length, length, dtype=torch.float64), 1)
             for w in layers]
    auto = attention_rollout(noisy, residual_weight=residual)
    torch.testing.assert_close(auto.double(), want, atol=1e-6, rtol=1e-5)
    full = torch.softmax(torch.randn(1, 2, length, length, generator=g), -1)
    forced = attention_rollout([full], causal_normalize=True)
    assert torch.equal(torch.triu(forced[0], 1), torch.zeros(length, length))


def test_rollout_zero_rows_stay_zero_and_bad_shapes_are_named() -> None:
    """A position that attends nowhere (all-zero row) with no residual gives a zero row, not
    NaN; weights that are not (B, H, Lq, Lk) are refused with their shape."""
    w = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    w[0, :, 1] = 0.0
    out = attention_rollout([w], residual_weight=0.0, causal_normalize=False)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0, 1], torch.zeros(3))
    torch.testing.assert_close(out[0, 0], w[0, :, 0].mean(0) / w[0, :, 0].mean(0).sum())
    with pytest.raises(ValueError, match=r"must be \(batch, heads, Lq, Lk\), got shape "
                                         r"\(2, 3, 3\)"):
        attention_rollout([w[0]])


def test_rollout_of_three_layers_with_other_head_counts_by_value() -> None:
    """Layers may have different head counts (fused per layer); the result is the last of the
    cumulative steps, each R_l = Ã_l @ R_(l-1) of the plain-math docstring."""
    g = torch.Generator().manual_seed(3)
    layers = [torch.softmax(torch.randn(2, heads, 4, 4, generator=g, dtype=torch.float64), -1)
              for heads in (1, 3, 2)]
    plain = torch.eye(4, dtype=torch.float64).expand(2, 4, 4)
    want = []
    for w in layers:
        a = 0.5 * w.mean(1) + 0.5 * torch.eye(4, dtype=torch.float64)
        plain = (a / a.sum(-1, keepdim=True)) @ plain
        want.append(plain)
    got = attention_rollout(layers, causal_normalize=False)
    assert got.dtype == torch.float32 and got.shape == (2, 4, 4)
    torch.testing.assert_close(got.double(), want[-1], atol=1e-6, rtol=1e-5)
    steps = attention_rollout(layers, causal_normalize=False, cumulative=True)
    torch.testing.assert_close(steps.double(), torch.stack(want), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"must be \(batch, heads, Lq, Lk\), got shape "
                                         r"\(3, 4, 4\)"):
        attention_rollout([layers[0], layers[1][0]])  # a (H, L, L) map among the layers
    with pytest.raises(ValueError, match=r"^rollout needs square self-attention maps of one "
                                         r"length, got shapes \[\(2, 1, 4, 4\), \(2, 3, 3, 4\)\]; "
                                         r"pass only the self-attention layers of one stream$"):
        attention_rollout([layers[0], layers[1][:, :, 1:]])


def test_causal_normalized_rollout_has_finite_gradients() -> None:
    """The division by the uniform-causal baseline is guarded where the baseline is 0 (above
    the diagonal), in the backward pass too: gradients to the weights are finite, also when
    normalization is forced on non-causal maps."""
    g = torch.Generator().manual_seed(4)
    lower = torch.tril(torch.rand(1, 2, 4, 4, generator=g, dtype=torch.float64)) + 0.1
    causal = (lower.tril() / lower.tril().sum(-1, keepdim=True)).requires_grad_()
    full = torch.softmax(torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64), -1)
    full.requires_grad_()
    for w in (causal, full):
        out = attention_rollout([w, w], causal_normalize=True)
        (out * torch.randn(out.shape, generator=g)).sum().backward()
        assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_fuse_heads_and_residual_normalize_defaults() -> None:
    """fuse_heads averages the heads by default; residual_normalize weighs the identity 0.5."""
    from attnkit.explain.rollout import fuse_heads, residual_normalize

    w = torch.softmax(torch.randn(2, 3, 4, 4, dtype=torch.float64), -1)
    torch.testing.assert_close(fuse_heads(w), w.mean(1))
    fused = w.mean(1)
    mixed = 0.5 * fused + 0.5 * torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(residual_normalize(fused), mixed / mixed.sum(-1, keepdim=True))
