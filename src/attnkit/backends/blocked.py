"""Memory-efficient exact attention in PyTorch: tiles, an online softmax, empty tiles skipped.

The score matrix is visited in (query block x key block) tiles. Each query block keeps a running
row maximum ``m``, normalizer ``l`` and output accumulator, so no ``Lq x Lk`` tensor ever
exists (FlashAttention's online softmax). Tiles the mask marks EMPTY are never computed; tiles
marked FULL skip the mask. Backward is a custom autograd function that recomputes each tile
from q, k, v and the saved per-row log-sum-exp, so training memory is linear in L as well.

On CPU (float32 / float64, no bias, no softcap) the same plan of tiles is run by torch's fused
flash kernel, one call per run of non-empty tiles, merged by log-sum-exp: see
:mod:`attnkit.backends.blocked_fused`. The loop below is the readable version and the fallback.

Shape legend: B batch, Hq / Hkv query / kv heads, G = Hq / Hkv, Lq / Lk lengths,
bq / bk tile sizes, D / Dv head dims.

Plain PyTorch equivalent (what the tiles add up to)::

    p = softmax(mods(q @ k^T * scale).masked_fill(~mask, -inf), -1)   # zero rows stay zero
    out = p @ v
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from attnkit.backends import tuning
from attnkit.backends.base import Backend, Capabilities
from attnkit.backends.blocked_fused import (
    fused_backward,
    fused_forward,
    fused_supports,
    make_plan,
)
from attnkit.functional.masks import EMPTY, FULL
from attnkit.functional.math import AttentionSpec, finite_or

__all__ = ["BlockedBackend", "TileSizes", "blocked_attention"]


@dataclass(frozen=True)
class TileSizes:
    """Tile shape; ``None`` picks the measured default of the path that runs.

    The fused CPU path calls torch's kernel once per run of non-empty tiles, so its tiles only set
    how finely masked work is skipped (default 128 x 128); the pure PyTorch loop pays Python
    overhead per tile (default 256 x 512); both defaults are tuning constants
    (:mod:`attnkit.backends.tuning`). Larger tiles mean fewer steps, smaller ones skip masked
    work better. With no size given, the fused path plans some masks by their structure
    instead: a causal mask as one causal kernel call, packed documents as one call per document,
    a narrow two-sided band (sliding window) as blocks of 32 query rows with exactly the keys they
    reach; giving a size asks for the tile plan for every mask.
    """

    block_q: int | None = None  # query rows per tile
    block_k: int | None = None  # keys per tile

    def __post_init__(self) -> None:
        for name in ("block_q", "block_k"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TileSizes.{name} must be >= 1 or None, got {value}")

    @property
    def is_default(self) -> bool:
        """No size given: the fused path may plan causal and document masks by structure."""
        return self.block_q is None and self.block_k is None

    def resolved(self, fused: bool) -> tuple[int, int]:
        """(block_q, block_k) for the fused path or the pure loop."""
        t = tuning.current()
        dq, dk = (t.fused_block_q, t.fused_block_k) if fused else (t.pure_block_q, t.pure_block_k)
        return (self.block_q or dq, self.block_k or dk)


def _tile_mods(spec: AttentionSpec, scores: Tensor, q_idx: Tensor, k_idx: Tensor,
               bias_tensors: Sequence[Tensor]) -> Tensor:
    """Apply bias and softcap to a tile of raw scaled scores (B, Hkv, G, bq, bk)."""
    if spec.bias is not None:
        tile = spec.bias.tile(q_idx, k_idx, spec.lq, spec.lk, bias_tensors)  # (B|1,H|1,bq,bk)
        scores = scores + _group(tile, spec).to(scores.dtype)
    if spec.softcap is not None:
        scores = spec.softcap * torch.tanh(scores / spec.softcap)
    return scores


def _group(t: Tensor, spec: AttentionSpec) -> Tensor:
    """(B|1, Hq|1, x, y) -> (B|1, Hkv|1, G|1, x, y) to broadcast against grouped scores."""
    if t.shape[1] == 1:
        return t.unsqueeze(2)
    return t.unflatten(1, (spec.kv_heads, spec.heads // spec.kv_heads))


def _tile_allowed(spec: AttentionSpec, q_idx: Tensor, k_idx: Tensor) -> Tensor:
    """Mask of a partial tile as (B|1, Hkv|1, G|1, bq, bk) bool."""
    assert spec.mask is not None
    return _group(spec.mask.tile(q_idx, k_idx, spec.lq, spec.lk), spec)


class _Plan:
    """Which key tiles each query tile visits, and whether the tile needs its mask applied."""

    def __init__(self, spec: AttentionSpec, tiles: TileSizes) -> None:
        self.bq, self.bk = tiles.resolved(fused=False)
        self.n_q = math.ceil(spec.lq / self.bq)
        self.n_k = math.ceil(spec.lk / self.bk)
        if spec.mask is None:
            self.states = None
        else:
            # Over batch and heads: a tile is skipped if empty everywhere, unmasked if full
            # everywhere.
            s = spec.mask.block_states(spec.lq, spec.lk, self.bq, self.bk, torch.device("cpu"))
            self.states = torch.where(
                (s == EMPTY).flatten(0, 1).all(0), EMPTY,
                torch.where((s == FULL).flatten(0, 1).all(0), FULL, 1)).tolist()

    def visits(self, qi: int) -> list[tuple[int, bool]]:
        """(key tile index, needs mask) for every non-empty tile of query tile ``qi``."""
        if self.states is None:
            return [(kj, False) for kj in range(self.n_k)]
        row = self.states[qi]
        return [(kj, row[kj] != FULL) for kj in range(self.n_k) if row[kj] != EMPTY]


def _grouped_q(q: Tensor, kv_heads: int) -> Tensor:
    """(B, Hq, L, D) -> (B, Hkv, G, L, D)."""
    return q.unflatten(1, (kv_heads, q.shape[1] // kv_heads))


def _forward(spec: AttentionSpec, tiles: TileSizes, bias_tensors: Sequence[Tensor]
             ) -> tuple[Tensor, Tensor]:
    """Tiled forward: output (B, Hq, Lq, Dv) and row log-sum-exp (B, Hq, Lq), -inf if empty."""
    plan = _Plan(spec, tiles)
    q = _grouped_q(spec.q, spec.kv_heads)  # (B, Hkv, G, Lq, D)
    k, v = spec.k, spec.v  # (B, Hkv, Lk, D), (B, Hkv, Lk, Dv)
    dev, acc_dtype = q.device, spec.q.dtype
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=acc_dtype, device=dev)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=acc_dtype, device=dev)
    for qi in range(plan.n_q):
        q0, q1 = qi * plan.bq, min((qi + 1) * plan.bq, spec.lq)
        q_blk = q[..., q0:q1, :]  # (B, Hkv, G, bq, D)
        q_idx = torch.arange(q0, q1, device=dev)
        m = torch.full(q_blk.shape[:-1], float("-inf"), dtype=acc_dtype, device=dev)
        l_sum = torch.zeros_like(m)
        acc = torch.zeros(*q_blk.shape[:-1], v.shape[-1], dtype=acc_dtype, device=dev)
        for kj, needs_mask in plan.visits(qi):
            k0, k1 = kj * plan.bk, min((kj + 1) * plan.bk, spec.lk)
            k_idx = torch.arange(k0, k1, device=dev)
            s = (q_blk @ k[:, :, None, k0:k1].transpose(-1, -2)) * spec.scale
            s = _tile_mods(spec, s, q_idx, k_idx, bias_tensors)
            if needs_mask:
                s = s.masked_fill(~_tile_allowed(spec, q_idx, k_idx), float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            m_safe = finite_or(m_new)
            p = torch.exp(s - m_safe[..., None])
            correction = torch.exp(m - m_safe)
            l_sum = l_sum * correction + p.sum(-1)
            acc = acc * correction[..., None] + p @ v[:, :, None, k0:k1]
            m = m_new
        has_key = l_sum > 0
        out[..., q0:q1, :] = acc / torch.where(has_key, l_sum, torch.ones_like(l_sum))[..., None]
        lse[..., q0:q1] = torch.where(has_key, m + torch.log(l_sum), lse[..., q0:q1])
    return out.flatten(1, 2), lse.flatten(1, 2)


def _backward(spec: AttentionSpec, tiles: TileSizes, bias_tensors: Sequence[Tensor],
              wants_bias_grad: Sequence[bool], out: Tensor, lse: Tensor, grad_out: Tensor
              ) -> tuple[Tensor | None, ...]:
    """Recompute tiles and accumulate dq, dk, dv and the bias tensors' gradients."""
    plan = _Plan(spec, tiles)
    g = spec.heads // spec.kv_heads
    q = _grouped_q(spec.q, spec.kv_heads)
    k, v = spec.k, spec.v
    dout = _grouped_q(grad_out, spec.kv_heads)  # (B, Hkv, G, Lq, Dv)
    lse = lse.unflatten(1, (spec.kv_heads, g))  # (B, Hkv, G, Lq)
    lse_safe = finite_or(lse, float("inf"))
    delta = (dout * _grouped_q(out, spec.kv_heads)).sum(-1)  # (B, Hkv, G, Lq)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    bias_grads = [torch.zeros_like(t) if w else None for t, w in zip(bias_tensors, wants_bias_grad)]
    dev = q.device
    for qi in range(plan.n_q):
        q0, q1 = qi * plan.bq, min((qi + 1) * plan.bq, spec.lq)
        q_blk, do_blk = q[..., q0:q1, :], dout[..., q0:q1, :]
        q_idx = torch.arange(q0, q1, device=dev)
        for kj, needs_mask in plan.visits(qi):
            k0, k1 = kj * plan.bk, min((kj + 1) * plan.bk, spec.lk)
            k_idx = torch.arange(k0, k1, device=dev)
            k_blk, v_blk = k[:, :, None, k0:k1], v[:, :, None, k0:k1]  # (B, Hkv, 1, bk, D)
            raw = (q_blk @ k_blk.transpose(-1, -2)) * spec.scale
            leaves = [t.detach().requires_grad_(w) for t, w in zip(bias_tensors, wants_bias_grad)]
            track = any(wants_bias_grad) or spec.softcap is not None
            with torch.enable_grad():
                raw_leaf = raw.detach().requires_grad_(track)
                s = _tile_mods(spec, raw_leaf, q_idx, k_idx, leaves)
            p = torch.exp(s.detach() - lse_safe[..., q0:q1, None])
            if needs_mask:
                p = p.masked_fill(~_tile_allowed(spec, q_idx, k_idx), 0.0)
            dv[:, :, k0:k1] += (p.transpose(-1, -2) @ do_blk).sum(2)
            dp = do_blk @ v_blk.transpose(-1, -2)
            ds = p * (dp - delta[..., q0:q1, None])  # gradient w.r.t. modified scores
            if track:
                wanted = [raw_leaf, *[t for t in leaves if t.requires_grad]]
                grads = torch.autograd.grad(s, wanted, ds, allow_unused=True)
                ds_raw = grads[0]
                it = iter(grads[1:])
                for acc_grad in bias_grads:
                    if acc_grad is not None:
                        gb = next(it)
                        if gb is not None:
                            acc_grad += gb
            else:
                ds_raw = ds
            dq[..., q0:q1, :] += (ds_raw @ k_blk) * spec.scale
            dk[:, :, k0:k1] += (ds_raw.transpose(-1, -2) @ q_blk).sum(2) * spec.scale
    return (dq.flatten(1, 2), dk, dv, *bias_grads)


class _BlockedFunction(torch.autograd.Function):
    """Pure PyTorch tiles: forward keeps the row log-sum-exp, backward recomputes the tiles."""

    @staticmethod
    def forward(ctx: Any, spec: AttentionSpec, tiles: TileSizes, *tensors: Tensor) -> Tensor:
        q, k, v, *bias_tensors = tensors
        spec = replace(spec, q=q, k=k, v=v)
        out, lse = _forward(spec, tiles, bias_tensors)
        ctx.spec, ctx.tiles = spec, tiles
        ctx.save_for_backward(q, k, v, out, lse, *bias_tensors)
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:
        q, k, v, out, lse, *bias_tensors = ctx.saved_tensors
        spec: AttentionSpec = ctx.spec
        spec = replace(spec, q=q, k=k, v=v)
        wants_bias_grad = ctx.needs_input_grad[5:]
        result = _backward(spec, ctx.tiles, bias_tensors, wants_bias_grad, out, lse,
                           grads[0].contiguous())
        return (None, None, *result)


class _FusedBlockedFunction(torch.autograd.Function):
    """Fused CPU kernel on runs of tiles (see :mod:`attnkit.backends.blocked_fused`)."""

    @staticmethod
    def forward(ctx: Any, spec: AttentionSpec, tiles: TileSizes, q: Tensor, k: Tensor,
                v: Tensor) -> Tensor:
        spec = replace(spec, q=q, k=k, v=v)
        plan = make_plan(spec, *tiles.resolved(fused=True), by_structure=tiles.is_default)
        out, lse = fused_forward(spec, plan)
        ctx.spec, ctx.plan = spec, plan
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Any:
        q, k, v, out, lse = ctx.saved_tensors
        spec: AttentionSpec = ctx.spec
        spec = replace(spec, q=q, k=k, v=v)
        dq, dk, dv = fused_backward(spec, ctx.plan, out, lse, grads[0].contiguous())
        return None, None, dq, dk, dv


def blocked_attention(spec: AttentionSpec, tiles: TileSizes | None = None, *,
                      fused: bool | None = None) -> Tensor:
    """Exact attention in tiles; differentiable with memory linear in L.

    ``fused=None`` uses torch's fused CPU kernel on runs of tiles when it can (CPU, float32 or
    float64, no bias, no softcap) and the pure PyTorch tile loop otherwise; ``False`` forces the
    pure loop; ``True`` raises if the fused path cannot run.
    """
    tiles = tiles or TileSizes()
    can_fuse = fused_supports(spec)
    if fused and not can_fuse:
        raise ValueError("the fused CPU path of 'blocked' needs a CPU tensor of float32 or "
                         "float64, no bias, no softcap, no dropout and torch's fused CPU flash "
                         "kernel; pass fused=None to fall back to the pure PyTorch tiles")
    if can_fuse and fused is not False:
        if not spec.needs_grad:
            with torch.no_grad():
                return fused_forward(spec, make_plan(spec, *tiles.resolved(fused=True),
                                                     by_structure=tiles.is_default))[0]
        out: Tensor = _FusedBlockedFunction.apply(spec, tiles, spec.q, spec.k, spec.v)
        return out
    bias_tensors = spec.bias.tensors() if spec.bias is not None else ()
    if not spec.needs_grad:
        with torch.no_grad():
            return _forward(spec, tiles, bias_tensors)[0]
    result: Tensor = _BlockedFunction.apply(spec, tiles, spec.q, spec.k, spec.v, *bias_tensors)
    return result


class BlockedBackend(Backend):
    name = "blocked"
    # Tiles with an online softmax, skipping empty tiles; on CPU (float32 / float64, no bias or
    # softcap) torch's fused kernel per run of tiles, merged by log-sum-exp.
    capabilities = Capabilities(dropout=False)

    def __init__(self, tiles: TileSizes | None = None, *, fused: bool | None = None) -> None:
        self.tiles = tiles or TileSizes()
        self.fused = fused  # None: fused CPU kernel when possible; False: pure PyTorch tiles

    def forward(self, spec: AttentionSpec) -> Tensor:
        return blocked_attention(spec, self.tiles, fused=self.fused)
