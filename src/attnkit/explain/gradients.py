"""Which output to explain, and the input-gradient × input baseline.

Shape legend: B batch, C classes (or vocabulary), L length, D embedding width.

A classifier returns logits (B, C); a language model or seq2seq decoder returns (B, L, C), and
the explained position defaults to the last one (the next-token prediction). The explained
score is the logit of ``target`` (default: the predicted class).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["first_embedding", "input_x_gradient", "target_scores"]


def target_scores(logits: Tensor, target: Tensor | int | None = None,
                  position: int = -1) -> tuple[Tensor, Tensor]:
    """(B, C) or (B, L, C) logits -> the (B,) explained logits and the (B,) target classes."""
    if logits.dim() == 3:
        logits = logits[:, position]
    if logits.dim() != 2:
        raise ValueError(f"expected logits (batch, classes) or (batch, length, classes), got "
                         f"shape {tuple(logits.shape)}; wrap the model so it returns logits")
    if target is None:
        chosen = logits.argmax(dim=-1)
    elif isinstance(target, int):
        chosen = torch.full((logits.shape[0],), target, dtype=torch.long, device=logits.device)
    else:
        chosen = target.to(device=logits.device, dtype=torch.long).reshape(-1)
    if chosen.numel() != logits.shape[0] or bool((chosen < 0).any()) or bool(
            (chosen >= logits.shape[1]).any()):
        raise ValueError(f"target must hold one class in 0..{logits.shape[1] - 1} per example "
                         f"(batch {logits.shape[0]}), got {chosen.tolist()}")
    return logits.gather(1, chosen[:, None])[:, 0], chosen


def first_embedding(model: nn.Module) -> nn.Embedding:
    """The model's first ``nn.Embedding`` (the token embedding of a text model)."""
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return module
    raise ValueError(f"{type(model).__name__} has integer inputs but no nn.Embedding; pass the "
                     f"embedding module explicitly (embedding=...)")


def _require_graph(score: Tensor) -> None:
    if not score.requires_grad:
        raise ValueError("the model output does not require gradients (frozen parameters or "
                         "torch.no_grad()); gradient methods need "
                         "model.requires_grad_(True) and grad mode enabled")


def input_x_gradient(model: nn.Module, *inputs: Any, target: Tensor | int | None = None,
                     position: int = -1, embedding: nn.Module | None = None) -> Tensor:
    """Input-gradient × input (Shrikumar et al., 2016; the simple gradient baseline).

    The first input is explained. Float inputs (images (B, C, H, W), audio frames (B, T, F))
    return ``x * dscore/dx`` in the input's shape. Integer token inputs (B, L) return
    ``sum_D(e * dscore/de)`` over the embedding output ``e`` (B, L, D), i.e. (B, L).
    """
    first = inputs[0]
    with torch.enable_grad():
        if first.is_floating_point():
            x = first.detach().clone().requires_grad_(True)
            score, _ = target_scores(model(x, *inputs[1:]), target, position)
            _require_graph(score)
            (grad,) = torch.autograd.grad(score.sum(), x)
            return (grad * x).detach()
        module = embedding if embedding is not None else first_embedding(model)
        captured: list[Tensor] = []

        def keep(mod: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            if not captured:  # the first call embeds the explained input
                captured.append(out)

        handle = module.register_forward_hook(keep)
        try:
            score, _ = target_scores(model(*inputs), target, position)
        finally:
            handle.remove()
        _require_graph(score)
        (grad,) = torch.autograd.grad(score.sum(), captured[0])
        return (grad * captured[0]).sum(dim=-1).detach()
