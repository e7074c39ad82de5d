"""Faithfulness and sanity of explanations.

Shape legend: B batch, F features (the units an explanation scores: patches, frames, tokens),
S perturbation steps.

* Perturbation curves (Samek et al., 2017; as used by Chefer et al., 2021): remove the inputs
  an explanation ranks *most* relevant first — a faithful map makes the model's score fall fast
  (low AUC is good) — or *least* relevant first — the score should hold (high AUC is good).
  Deletion and insertion (Petsiuk et al., 2018, RISE) track the target-class probability while
  features are removed from the input / inserted into a blank one, most relevant first
  (deletion: lower is better; insertion: higher is better).
* Model-randomization sanity check (Adebayo et al., 2018, "Sanity Checks for Saliency Maps"):
  re-initialize the model's weights block by block from the top (cascading) and measure the
  Spearman rank correlation of each new map with the original; a method that explains the
  *model* must lose correlation as weights are destroyed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Curve", "SanityStep", "auc", "cascading_randomization", "parameter_blocks",
           "perturbation_curve", "spearman"]

Predict = Callable[[Tensor], Tensor]  # inputs -> (B,) score (probability, correctness)
Remove = Callable[[Tensor, Tensor], Tensor]  # (inputs, keep (B, F) bool) -> perturbed inputs


def auc(xs: Tensor | Sequence[float], ys: Tensor | Sequence[float]) -> float:
    """Area under the curve by the trapezoid rule, normalized by the x range (so in y units)."""
    x = torch.as_tensor(xs, dtype=torch.float64)
    y = torch.as_tensor(ys, dtype=torch.float64)
    if x.dim() != 1 or x.shape != y.shape or x.numel() < 2:
        raise ValueError(f"auc needs two 1-D sequences of equal length >= 2, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    width = float(x[-1] - x[0])
    if width <= 0:
        raise ValueError(f"auc needs increasing x values, got {x.tolist()}")
    return float(torch.trapezoid(y, x)) / width


@dataclass(frozen=True)
class Curve:
    """A perturbation curve: the mean score after perturbing each fraction of the features."""

    fractions: Tensor  # (S + 1,) fraction of features removed (or inserted), 0 .. 1
    values: Tensor  # (S + 1,) mean score over the batch at each fraction
    auc: float  # normalized area under ``values``


def perturbation_curve(predict: Predict, inputs: Tensor, scores: Tensor, remove: Remove, *,
                       most_relevant_first: bool = True, insert: bool = False,
                       steps: int = 10) -> Curve:
    """Score the model while features are removed (or inserted) in the order of ``scores``.

    Args:
        predict: inputs -> (B,) score, e.g. the probability of the originally predicted class.
        inputs: (B, ...) model inputs.
        scores: (B, F) relevance of each feature; ties keep index order.
        remove: builds the perturbed inputs from a (B, F) boolean "keep" mask.
        most_relevant_first: order features by decreasing (True) or increasing relevance.
        insert: start from all features removed and add them back in that order
            (the insertion metric) instead of removing them.
        steps: number of perturbation steps after the unperturbed point.
    """
    if scores.dim() != 2 or scores.shape[0] != inputs.shape[0]:
        raise ValueError(f"scores must be (batch, features) with batch {inputs.shape[0]}, got "
                         f"shape {tuple(scores.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    batch, features = scores.shape
    order = torch.argsort(scores.float(), dim=-1, descending=most_relevant_first, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(features, device=order.device).expand(batch, -1))
    fractions = torch.linspace(0.0, 1.0, steps + 1)
    values = []
    with torch.no_grad():
        for fraction in fractions.tolist():
            count = round(fraction * features)
            touched = rank < count  # (B, F): the first `count` features in the order
            keep = touched if insert else ~touched
            values.append(float(predict(remove(inputs, keep)).float().mean()))
    curve_values = torch.tensor(values)
    return Curve(fractions, curve_values, auc(fractions, curve_values))


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two maps (flattened; ties get average ranks)."""
    from scipy.stats import spearmanr  # imported here: scipy is slow to import for the CLI

    x = a.detach().float().flatten().cpu().numpy()
    y = b.detach().float().flatten().cpu().numpy()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"spearman needs two maps with the same number (>= 2) of entries, got "
                         f"{a.numel()} and {b.numel()}")
    if x.std() == 0 or y.std() == 0:
        return 0.0  # a constant map carries no ranking
    return float(spearmanr(x, y).statistic)


def parameter_blocks(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """Modules that own parameters, grouped into blocks, in forward (definition) order.

    A module belongs to the block named by its path up to the first numeric component
    (``"blocks.3.attn.q_proj"`` -> ``"blocks.3"``); others are their own block (``"head"``).
    """
    blocks: dict[str, list[nn.Module]] = {}
    for name, module in model.named_modules():
        if not name or not any(True for _ in module.parameters(recurse=False)):
            continue
        match = re.match(r"^(.*?\.\d+)(\.|$)", name)
        blocks.setdefault(match.group(1) if match else name, []).append(module)
    return list(blocks.items())


def _reinitialize(module: nn.Module, generator: torch.Generator) -> None:
    for param in module.parameters(recurse=False):
        fresh = torch.empty(param.shape)  # drawn on the CPU so one generator serves any device
        if param.dim() >= 2:
            bound = 1.0 / max(1, param.shape[-1]) ** 0.5
            fresh.uniform_(-bound, bound, generator=generator)
        else:
            fresh.normal_(0.0, 0.1, generator=generator)
        with torch.no_grad():
            param.copy_(fresh)


@dataclass(frozen=True)
class SanityStep:
    """Correlation with the original map after randomizing every block down to ``block``."""

    block: str  # the last block randomized (top-down cascade)
    spearman: float  # rank correlation of the maps, averaged over the batch


def cascading_randomization(model: nn.Module, explain: Callable[[nn.Module], Tensor], *,
                            blocks: Sequence[str] | None = None,
                            seed: int = 0) -> list[SanityStep]:
    """Adebayo et al.'s cascading model-randomization check, top (output) block first.

    Args:
        model: the trained model (left untouched: a deep copy is randomized).
        explain: model -> (B, F) explanation maps of fixed inputs.
        blocks: names from :func:`parameter_blocks` to randomize, in cascade order; default
            all blocks from the output down.
        seed: seed of the random weights.
    """
    original = explain(model).detach()
    randomized = copy.deepcopy(model)
    by_name = dict(parameter_blocks(randomized))
    order = list(reversed(by_name)) if blocks is None else list(blocks)
    unknown = [b for b in order if b not in by_name]
    if unknown:
        raise ValueError(f"unknown blocks {unknown}; the model's blocks are {list(by_name)}")
    generator = torch.Generator().manual_seed(seed)
    results = []
    for name in order:
        for module in by_name[name]:
            _reinitialize(module, generator)
        current = explain(randomized).detach()
        rhos = [spearman(o, c) for o, c in zip(original, current, strict=True)]
        results.append(SanityStep(name, sum(rhos) / len(rhos)))
    return results
