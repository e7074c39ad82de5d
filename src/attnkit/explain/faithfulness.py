"""Which explanation of a ViT is faithful? Perturbation AUCs of every method against random.

Shape legend: B images, C channels, H x W pixels, gh x gw patch grid, F = gh * gw patches.

For each test image every method scores the F patches: with a class token, the class token's row
of its map without the class token itself; with mean pooling (no class token), the mean of all
rows, since the prediction reads the mean of every output token. Patches are then blanked (set
to the background value) in the method's order, and the model is re-run:

* positive perturbation: most relevant patches first, accuracy (lower AUC = more faithful);
* negative perturbation: least relevant first, accuracy (higher AUC = more faithful);
* deletion: most relevant first, probability of the originally predicted class (lower better);
* insertion: patches added to a blank image, most relevant first, same probability (higher).

A random ordering (several seeds, averaged) is the bar every method must clear.

Text classifiers whose prediction is read from the first token (BERT's [CLS]) are scored the same
way over their other tokens, which are removed by turning them into padding (masked out of
attention): :func:`token_explanations` and :func:`mask_tokens`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnkit.explain.capture import capture
from attnkit.explain.flow import attention_flow
from attnkit.explain.gradients import input_x_gradient
from attnkit.explain.metrics import SanityStep, cascading_randomization, perturbation_curve
from attnkit.explain.relevance import gradient_relevance
from attnkit.explain.rollout import attention_rollout, fuse_heads

__all__ = ["FaithfulnessRow", "evaluate_faithfulness", "format_table", "mask_tokens",
           "patch_explanations", "sanity_table", "token_explanations"]

PatchExplainer = Callable[[nn.Module, Tensor], Tensor]  # (model, images) -> (B, F)


def _self_maps(model: nn.Module, images: Tensor) -> list[Tensor]:
    with torch.no_grad(), capture(model) as cap:
        model(images)
    return [r.dense_weights() for r in cap.self_attention()]


def _output_scores(matrix: Tensor, first: int) -> Tensor:
    """(B, L, L) map -> (B, F) patch scores: the class token's row (``first`` = 1 prefix
    token), or the mean of all rows (mean pooling, ``first`` = 0)."""
    rows = matrix[:, 0] if first else matrix.mean(1)
    return rows[:, first:]


def raw_last_layer(model: nn.Module, images: Tensor, first: int = 1) -> Tensor:
    return _output_scores(fuse_heads(_self_maps(model, images)[-1]), first)


def rollout_cls(model: nn.Module, images: Tensor, first: int = 1) -> Tensor:
    return _output_scores(attention_rollout(_self_maps(model, images)), first)


def flow_cls(model: nn.Module, images: Tensor) -> Tensor:
    return attention_flow(_self_maps(model, images), output_positions=[0])[:, 0, 1:]


def relevance_cls(model: nn.Module, images: Tensor, first: int = 1) -> Tensor:
    return _output_scores(gradient_relevance(model, images).source, first)


def input_gradient_patches(grid: tuple[int, int]) -> PatchExplainer:
    def explain(model: nn.Module, images: Tensor) -> Tensor:
        per_pixel = input_x_gradient(model, images).sum(1)  # (B, H, W)
        b, h, w = per_pixel.shape
        gh, gw = grid
        return per_pixel.reshape(b, gh, h // gh, gw, w // gw).sum(dim=(2, 4)).flatten(1)
    return explain


def patch_explanations(grid: tuple[int, int], *, class_token: bool = True
                       ) -> dict[str, PatchExplainer]:
    """Every method, as (model, images) -> (B, F) patch scores.

    Without a class token (mean pooling) the maps' rows are averaged and attention flow is left
    out: it would solve one max-flow problem per output token and input patch."""
    if class_token:
        return {"raw attention (last layer, CLS row)": raw_last_layer,
                "attention rollout": rollout_cls,
                "attention flow": flow_cls,
                "gradient relevance (Chefer)": relevance_cls,
                "input x gradient": input_gradient_patches(grid)}
    return {"raw attention (last layer, mean of rows)":
            lambda m, x: raw_last_layer(m, x, first=0),
            "attention rollout (mean of rows)": lambda m, x: rollout_cls(m, x, first=0),
            "gradient relevance (Chefer, mean of rows)":
            lambda m, x: relevance_cls(m, x, first=0),
            "input x gradient": input_gradient_patches(grid)}


def token_explanations() -> dict[str, PatchExplainer]:
    """Every method for first-token classifiers, as (model, ids (B, L)) -> (B, L - 1) scores
    of the tokens after the first."""
    def input_gradient_tokens(model: nn.Module, ids: Tensor) -> Tensor:
        return input_x_gradient(model, ids, position=0)[:, 1:]
    return {"raw attention (last layer, CLS row)": raw_last_layer,
            "attention rollout": rollout_cls,
            "attention flow": flow_cls,
            "gradient relevance (Chefer)": relevance_cls,
            "input x gradient": input_gradient_tokens}


def mask_tokens(pad_id: int) -> Callable[[Tensor, Tensor], Tensor]:
    """Removal for token inputs: tokens after the first whose ``keep`` is False become
    ``pad_id`` (the model masks padding out of attention); ids (B, L), keep (B, L - 1)."""
    def remove(ids: Tensor, keep: Tensor) -> Tensor:
        kept = torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)  # (B, L)
        return ids.masked_fill(~kept, pad_id)
    return remove


@dataclass(frozen=True)
class FaithfulnessRow:
    method: str
    positive: float  # accuracy AUC, most relevant removed first (lower is better)
    negative: float  # accuracy AUC, least relevant removed first (higher is better)
    deletion: float  # predicted-class probability AUC, most relevant removed first (lower)
    insertion: float  # same, most relevant inserted first into a blank image (higher)


def _blank_patches(grid: tuple[int, int], background: float) -> Callable[[Tensor, Tensor], Tensor]:
    def remove(images: Tensor, keep: Tensor) -> Tensor:
        b, _, h, w = images.shape
        gh, gw = grid
        pixels = keep.view(b, 1, gh, gw).repeat_interleave(h // gh, 2).repeat_interleave(
            w // gw, 3).to(images.dtype)  # (B, 1, H, W)
        return images * pixels + background * (1 - pixels)
    return remove


def evaluate_faithfulness(model: nn.Module, images: Tensor, labels: Tensor, *,
                          grid: tuple[int, int] | None = None, steps: int = 16,
                          random_repeats: int = 5, background: float = 0.0, seed: int = 0,
                          methods: dict[str, PatchExplainer] | None = None,
                          remove: Callable[[Tensor, Tensor], Tensor] | None = None
                          ) -> list[FaithfulnessRow]:
    """Perturbation AUCs of every method and of a random ordering on ``images``.

    Images: give ``grid`` (patches are blanked to ``background``). Other inputs (token ids):
    give ``methods`` and ``remove`` instead (e.g. :func:`token_explanations`,
    :func:`mask_tokens`).
    """
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(-1)
    if remove is None:
        if grid is None:
            raise ValueError("give the patch grid for images, or methods and remove for other "
                             "inputs")
        remove = _blank_patches(grid, background)
    if methods is None:
        if grid is None:
            raise ValueError("give methods for inputs that are not images")
        methods = patch_explanations(grid)

    def accuracy(x: Tensor) -> Tensor:
        return (model(x).argmax(-1) == labels).float()

    def probability(x: Tensor) -> Tensor:
        return model(x).softmax(-1).gather(1, predicted[:, None])[:, 0]

    def row(name: str, scores: list[Tensor]) -> FaithfulnessRow:
        def mean_auc(predict: Callable[[Tensor], Tensor], **kw: bool) -> float:
            return sum(perturbation_curve(predict, images, s, remove, steps=steps, **kw).auc
                       for s in scores) / len(scores)
        return FaithfulnessRow(name, mean_auc(accuracy), mean_auc(
            accuracy, most_relevant_first=False), mean_auc(probability),
            mean_auc(probability, insert=True))

    scores = {name: explain(model, images).detach() for name, explain in methods.items()}
    rows = [row(name, [value]) for name, value in scores.items()]
    generator = torch.Generator().manual_seed(seed)
    features = next(iter(scores.values())).shape[-1]
    # drawn on the CPU (one seeded generator for any device), compared where the model runs
    randoms = [torch.rand(images.shape[0], features, generator=generator).to(images.device)
               for _ in range(random_repeats)]
    rows.append(row(f"random order (mean of {random_repeats})", randoms))
    return rows


def sanity_table(model: nn.Module, images: Tensor, *, grid: tuple[int, int] | None = None,
                 methods: dict[str, PatchExplainer] | None = None
                 ) -> dict[str, list[SanityStep]]:
    """Cascading randomization: method -> Spearman with the original map after each block.

    ``grid`` for images (every patch method but flow); ``methods`` for other inputs."""
    if methods is None and grid is None:
        raise ValueError("give the patch grid for images, or methods for other inputs")
    chosen = methods or {k: v for k, v in patch_explanations(grid or (1, 1)).items()
                         if "flow" not in k}
    def on_images(explain: PatchExplainer) -> Callable[[nn.Module], Tensor]:
        return lambda m: explain(m, images)

    return {name: cascading_randomization(model, on_images(explain))
            for name, explain in chosen.items()}


def format_table(rows: list[FaithfulnessRow]) -> str:
    """Markdown table of the rows."""
    lines = ["| method | positive AUC (acc, lower better) | negative AUC (acc, higher better) "
             "| deletion AUC (prob, lower better) | insertion AUC (prob, higher better) |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r.method} | {r.positive:.3f} | {r.negative:.3f} | {r.deletion:.3f} | "
              f"{r.insertion:.3f} |" for r in rows]
    return "\n".join(lines)
