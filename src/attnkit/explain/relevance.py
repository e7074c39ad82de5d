"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, 2021, "Generic
Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers").

Shape legend: B batch, H heads, Ls source (encoder / only) length, Lt target (decoder) length.

Every attention map A (B, H, Lq, Lk) is weighted by the gradient of the explained logit with
respect to it and averaged over heads, keeping the positive part:

    Ā = mean_h((∇A ⊙ A)^+)                                              (paper eq. 5)

Relevance maps start as identities (each token is relevant to itself), cross maps at zero, and
are updated layer by layer in the order the model ran:

    self-attention of a stream x:     R^{xx} += Ā · R^{xx}                   (eq. 6)
                                      R^{xy} += Ā · R^{xy}                   (eq. 7)
    target t attending to source s:   R^{ts} += (R̄^{tt})^T · Ā · R̄^{ss}     (eq. 10)
                                      R^{tt} += Ā · R^{st}  (R^{st} = 0 for an encoder that
                                                             never sees the decoder)  (eq. 11)

where R̄ = (R − I) with rows normalized to sum 1, plus I (eq. 8–9: it keeps the residual's
identity from dominating). A classifier's explanation is the class-token row of R^{ss}; a
decoder's is row ``position`` of R^{tt} (own tokens) and of R^{ts} (source tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from attnkit.explain.capture import AttentionRecord, capture
from attnkit.explain.gradients import target_scores

__all__ = ["Relevance", "RelevanceStep", "StepKind", "assign_streams", "gradient_relevance",
           "head_averaged_relevance", "relevance_from_steps"]

StepKind = Literal["source", "target", "cross"]


@dataclass(frozen=True)
class RelevanceStep:
    """One attention map with its gradient, in the order the model ran."""

    kind: StepKind  # "source" / "target" self-attention, or "cross" (target queries source)
    weights: Tensor  # (B, H, Lq, Lk)
    grad: Tensor  # (B, H, Lq, Lk) d score / d weights


@dataclass
class Relevance:
    """Relevance maps after all layers (and after each, for views)."""

    source: Tensor  # (B, Ls, Ls) R^{ss}: encoder (or only) stream
    target: Tensor | None = None  # (B, Lt, Lt) R^{tt}: decoder stream, if any
    cross: Tensor | None = None  # (B, Lt, Ls) R^{ts}: decoder tokens over source tokens
    history: list[tuple[StepKind, Tensor]] = field(default_factory=list)  # map after each step
    targets: Tensor | None = None  # (B,) the explained classes


def head_averaged_relevance(weights: Tensor, grad: Tensor) -> Tensor:
    """Ā = mean_h((∇A ⊙ A)^+): (B, H, Lq, Lk) -> (B, Lq, Lk)."""
    return (grad.float() * weights.float()).clamp(min=0).mean(dim=1)


def _normalized_residual(r: Tensor) -> Tensor:
    """R̄ = row_normalize(R − I) + I (eq. 8–9); rows of R − I that are all zero stay zero."""
    eye = torch.eye(r.shape[-1], dtype=r.dtype, device=r.device)
    without = r - eye
    total = without.sum(dim=-1, keepdim=True)
    return without / torch.where(total != 0, total, torch.ones_like(total)) + eye


def relevance_from_steps(steps: Sequence[RelevanceStep]) -> Relevance:
    """Apply the rules of the module docstring to ``steps`` (pure function of the maps)."""
    if not steps:
        raise ValueError("relevance needs at least one attention map with its gradient")
    r_ss: Tensor | None = None
    r_tt: Tensor | None = None
    r_ts: Tensor | None = None
    history: list[tuple[StepKind, Tensor]] = []

    def identity(batch: int, length: int, like: Tensor) -> Tensor:
        eye = torch.eye(length, dtype=torch.float32, device=like.device)
        return eye.expand(batch, length, length).clone()

    for step in steps:
        a_bar = head_averaged_relevance(step.weights, step.grad)  # (B, Lq, Lk)
        batch, lq, lk = a_bar.shape
        if step.kind == "source":
            r_ss = identity(batch, lq, a_bar) if r_ss is None else r_ss
            r_ss = r_ss + a_bar @ r_ss
            history.append(("source", r_ss))
        elif step.kind == "target":
            r_tt = identity(batch, lq, a_bar) if r_tt is None else r_tt
            if r_ts is not None:
                r_ts = r_ts + a_bar @ r_ts
            r_tt = r_tt + a_bar @ r_tt
            history.append(("target", r_tt))
        elif step.kind == "cross":
            r_tt = identity(batch, lq, a_bar) if r_tt is None else r_tt
            r_ss = identity(batch, lk, a_bar) if r_ss is None else r_ss
            r_ts = torch.zeros(batch, lq, lk, device=a_bar.device) if r_ts is None else r_ts
            r_ts = r_ts + _normalized_residual(r_tt).transpose(-1, -2) @ a_bar @ (
                _normalized_residual(r_ss))
            history.append(("cross", r_ts))
        else:
            raise ValueError(f"unknown step kind {step.kind!r}; use 'source', 'target', 'cross'")
    if r_ss is None:  # a decoder-only model: its one stream is the "source"
        r_ss, r_tt = r_tt, None
        history = [("source", h) for _, h in history]
    assert r_ss is not None
    return Relevance(source=r_ss, target=r_tt, cross=r_ts, history=history)


def assign_streams(records: Sequence[AttentionRecord],
                   decoder_prefix: str | None = None) -> list[StepKind]:
    """Label each record "source", "target" or "cross".

    Without cross-attention there is one stream ("source"). With it, a self-attention layer
    belongs to the decoder ("target") when its name starts with ``decoder_prefix`` — by
    default the first dotted component of the first cross-attention layer's name (e.g.
    ``"decoder"`` for ``"decoder.blocks.0.cross_attn"``).
    """
    crosses = [r for r in records if r.cross]
    if not crosses:
        return ["source"] * len(records)
    prefix = decoder_prefix if decoder_prefix is not None else crosses[0].name.split(".")[0]
    kinds: list[StepKind] = []
    for r in records:
        if r.cross:
            kinds.append("cross")
        elif r.name == prefix or r.name.startswith(prefix + "."):
            kinds.append("target")
        else:
            kinds.append("source")
    return kinds


def gradient_relevance(model: nn.Module, *inputs: Any, target: Tensor | int | None = None,
                       position: int = -1, decoder_prefix: str | None = None) -> Relevance:
    """Run ``model(*inputs)``, backpropagate the target logit, and compute Chefer relevance.

    Args:
        model: an attnkit model in eval mode (its parameters must require gradients).
        inputs: the model's positional inputs (seq2seq: source, target tokens).
        target: the class / token to explain per example (default: the prediction).
        position: which output position of a (B, L, C) output is explained.
        decoder_prefix: module-name prefix of the decoder (see :func:`assign_streams`).
    """
    with torch.enable_grad(), capture(model, gradients=True) as cap:
        score, chosen = target_scores(model(*inputs), target, position)
        if not score.requires_grad:
            raise ValueError("the model output does not require gradients (frozen parameters "
                             "or torch.no_grad()); call model.requires_grad_(True) first")
        # Gradients only to the probed outputs: their hooks fill record.grad, and the
        # parameters' .grad fields stay untouched.
        torch.autograd.grad(score.sum(), cap.outputs, allow_unused=True)
    kinds = assign_streams(cap.records, decoder_prefix)
    steps = [RelevanceStep(kind, r.dense_weights(), r.dense_grad())
             for kind, r in zip(kinds, cap.records, strict=True)]
    result = relevance_from_steps(steps)
    result.targets = chosen
    return result
