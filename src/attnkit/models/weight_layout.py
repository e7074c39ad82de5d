"""Memory layout of matrix weights: input-major storage for fast matrix-vector products.

An ``nn.Linear`` weight W has shape (out, in). PyTorch stores it ``output_major`` (row by row,
strides (in, 1)): each output is a dot product over one contiguous row. ``input_major``
storage (strides (1, out)) holds the same matrix as the memory of W^T, the (in, out) matrix
GPT-2's ``Conv1D`` keeps; ``F.linear(x, W)`` then computes ``x @ W^T`` over contiguous
memory. Values, shapes and gradients are the same; only the strides differ.

Why it matters: a decode step multiplies one row per sequence by every weight matrix, and on
the project's CPU (MKL, AVX-512, 1 thread) that matrix-vector product reads input-major weights
faster: GPT-2 small's 50257 x 768 output projection 7.8 ms against 12.2 ms, the MLPs of its 12
blocks 14.6 ms against 16.2-16.6 ms. Products of 8 rows or more give bitwise the same results
in either layout; one or two rows go through different matrix-vector kernels whose sums differ
in the last bits (as a change of thread count does).

Models are built in PyTorch's layout, which training runs fastest in (the products of 2,048 rows
against a 50257 x 256 output projection took 5-15% longer input-major), and a model about to
generate is switched once: ``set_weight_layout(model, "input_major")``.

Checkpoints do not change: ``state_dict()`` gives the same values with these strides;
attnkit's writers (:func:`attnkit.train.checkpoint.save_weights`, checkpoints, the Hugging Face
export) store them contiguous, in the same files as before, and ``load_state_dict`` copies into
the existing parameters, which keeps their layout. ``safetensors.torch.save_model`` itself
fails on a strided tied weight (it flattens shared tensors with ``view``): save with attnkit's
writers, ``save_file({k: v.contiguous() for k, v in model.state_dict().items()})`` for untied
models, or switch to ``"output_major"`` first. Seeded in-place re-initialization
(``weight.normal_()``) fills memory in order, so it draws different values in the two layouts;
draw into a new tensor and ``copy_`` it to get the same ones. Set the layout before wrapping a
model in DDP, whose gradient buckets follow the strides it sees.

Plain PyTorch equivalent of :func:`set_weight_layout` with ``"input_major"``::

    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.data = m.weight.data.t().contiguous().t()   # strides (1, out)
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor, nn

__all__ = ["WEIGHT_LAYOUTS", "is_input_major", "set_weight_layout", "weight_layout"]

#: the layouts :func:`set_weight_layout` takes
WEIGHT_LAYOUTS = ("input_major", "output_major")

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def is_input_major(weight: Tensor) -> bool:
    """Whether a 2-D ``weight`` (out, in) is stored as the contiguous (in, out) matrix W^T."""
    return weight.dim() == 2 and weight.t().is_contiguous()


def _linear_weights(module: nn.Module) -> list[nn.Parameter]:
    """The distinct, materialized weights of every ``nn.Linear`` in ``module`` (a weight tied
    to an embedding table appears once)."""
    weights: dict[int, nn.Parameter] = {}
    for linear in module.modules():
        weight = getattr(linear, "weight", None) if isinstance(linear, nn.Linear) else None
        if (isinstance(weight, nn.Parameter) and weight.dim() == 2
                and not isinstance(weight, nn.parameter.UninitializedParameter)):
            weights.setdefault(id(weight), weight)
    return list(weights.values())


def set_weight_layout(module: ModuleT, layout: str) -> ModuleT:
    """Store the weight of every ``nn.Linear`` in ``module`` in ``layout``, in place.

    ``"input_major"`` (strides (1, out), fast matrix-vector products) or ``"output_major"``
    (PyTorch's default, contiguous (out, in)). Parameters stay the same objects (ties, optimizer
    references and hooks hold), with the same values; an embedding table tied to an output
    projection moves with it. Returns ``module``.
    """
    if layout not in WEIGHT_LAYOUTS:
        raise ValueError(f"unknown weight layout {layout!r}; choose one of {list(WEIGHT_LAYOUTS)}")
    with torch.no_grad():
        for weight in _linear_weights(module):
            if layout == "input_major" and not is_input_major(weight):
                weight.data = weight.data.t().contiguous().t()
            elif layout == "output_major" and not weight.is_contiguous():
                weight.data = weight.data.contiguous()
    return module


def weight_layout(module: nn.Module) -> str:
    """The layout of ``module``'s ``nn.Linear`` weights: ``"input_major"``, ``"output_major"``,
    or ``"mixed"`` (also ``"output_major"`` when it has none). A weight with a dimension of 1
    is both and counts as either."""
    weights = _linear_weights(module)
    if all(w.is_contiguous() for w in weights):
        return "output_major"
    if all(is_input_major(w) for w in weights):
        return "input_major"
    return "mixed"
