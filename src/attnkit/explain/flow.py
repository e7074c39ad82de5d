"""Attention flow (Abnar & Zuidema, 2020): attribution as a maximum flow through the layers.

Shape legend: B batch, H heads, L sequence length, N layers.

The layers form a directed acyclic graph with one node per (layer, position): node (l, j) is
position j's representation *entering* layer l + 1, so (0, j) are the inputs and (N, i) the
outputs. Each layer contributes edges (l + 1, i) -> (l, j) with capacity Ã_l[i, j], the
head-fused attention with the residual identity added and rows renormalized (as in rollout).
The flow from output i to input j is the value of the maximum flow from (N, i) to (0, j).

Unlike rollout (a product of matrices, i.e. all paths multiplied), flow takes the bottleneck of
every path, which the paper found to correlate better with input-ablation importance — at a
cost of one max-flow per (output, input) pair, so it is for small inputs only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from attnkit.explain.rollout import fuse_heads, residual_normalize

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["MAX_FLOW_TOKENS", "attention_flow", "flow_graph"]

MAX_FLOW_TOKENS = 64  # above this many positions the L^2 max-flow problems get too slow


def flow_graph(layer_maps: Sequence[Tensor]) -> nx.DiGraph:
    """The capacity graph of one example: ``layer_maps`` are (L, L) residual-normalized maps."""
    import networkx as nx  # imported on use: slow to import, needed only for flow

    graph = nx.DiGraph()
    for layer, a in enumerate(layer_maps):
        rows, cols = torch.nonzero(a > 0, as_tuple=True)
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
            graph.add_edge((layer + 1, i), (layer, j), capacity=float(a[i, j]))
    return graph


def attention_flow(weights: Sequence[Tensor], *, head_fusion: str = "mean",
                   residual_weight: float = 0.5, output_positions: Sequence[int] | None = None,
                   max_tokens: int = MAX_FLOW_TOKENS, normalize: bool = True) -> Tensor:
    """Maximum-flow attribution from outputs to inputs.

    Args:
        weights: per layer, from input to output, (B, H, L, L) self-attention weights.
        head_fusion: "mean", "max" or "min" over heads.
        residual_weight: weight of the identity added to each layer (0.5 in the paper).
        output_positions: the output rows to compute (e.g. ``[0]`` for a class token);
            None = all.
        max_tokens: refuse inputs longer than this (L^2 max-flow problems per example).
        normalize: divide each row by its sum so rows are distributions like rollout's.

    Returns:
        (B, P, L) flows, P = len(output_positions) (or L).
    """
    if not weights:
        raise ValueError("attention_flow needs at least one layer of weights")
    length = int(weights[0].shape[-1])
    if length > max_tokens:
        raise ValueError(f"attention flow solves one max-flow per (output, input) pair; "
                         f"{length} positions exceed the limit of {max_tokens}. Use "
                         f"attention_rollout for long inputs, pick output_positions and raise "
                         f"max_tokens if you accept the cost")
    positions = list(range(length)) if output_positions is None else list(output_positions)
    bad = [p for p in positions if not 0 <= p < length]
    if bad:
        raise ValueError(f"output_positions {bad} are outside 0..{length - 1}")
    maps = [residual_normalize(fuse_heads(w.float().cpu(), head_fusion), residual_weight)
            for w in weights]  # N x (B, L, L)
    top = len(maps)
    batch = int(maps[0].shape[0])
    flows = torch.zeros(batch, len(positions), length)
    import networkx as nx  # imported on use (slow to import; only flow needs it)

    for b in range(batch):
        graph = flow_graph([m[b] for m in maps])
        for row, i in enumerate(positions):
            for j in range(length):
                if (top, i) in graph and (0, j) in graph:
                    flows[b, row, j] = nx.maximum_flow_value(graph, (top, i), (0, j))
    if normalize:
        total = flows.sum(dim=-1, keepdim=True)
        flows = flows / torch.where(total > 0, total, torch.ones_like(total))
    return flows.to(weights[0].device)
