"""KV caches for incremental decoding.

- :class:`StaticKVCache`: preallocated for ``max_length`` tokens and written in place; decoding
  token by token gives exactly the full causal forward pass. For a batch of prompts of different
  lengths, set :attr:`StaticKVCache.pads` (left padding per row): the pad slots are masked out and
  each row's positions start at 0 at its first real token.
- :class:`RollingKVCache`: constant memory for endless streams (StreamingLLM, Xiao et al., 2023):
  keeps the first ``sink`` tokens ("attention sinks") and the ``window`` most recent ones. Keys keep
  their original positions, so decoding equals a full forward with the mask
  :meth:`RollingKVCache.equivalent_mask`.

Shape legend: B batch, Hkv key/value heads, L new tokens, D / Dv head dims.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnkit.functional import masks
from attnkit.functional.masks import Mask

__all__ = ["KVCache", "RollingKVCache", "StaticKVCache"]


class KVCache:
    """Common interface: ``position`` (tokens seen so far) and ``update``."""

    position: int = 0

    def query_positions(self, length: int, device: torch.device | None = None) -> Tensor:
        """Absolute positions of the next ``length`` tokens: (L,), or (B, L) with padding.

        Position-aware layers (RoPE, learned tables) read this before :meth:`update`."""
        return torch.arange(self.position, self.position + length, device=device)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Mask | None]:
        """Add new keys (B, Hkv, L, D) / values (B, Hkv, L, Dv); return what to attend to:
        keys, values and an extra mask over them (None if the caller's causal mask suffices)."""
        raise NotImplementedError

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (B',) in that order: beam search follows surviving beams."""
        for name in ("keys", "values"):
            held = getattr(self, name, None)
            if isinstance(held, Tensor) and held.dim() == 4:  # (B, H, S, D) once filled
                setattr(self, name, held.index_select(0, index))

    def reset(self) -> None:
        raise NotImplementedError


class StaticKVCache(KVCache):
    """Preallocated cache of ``max_length`` positions (allocated on the first update)."""

    def __init__(self, max_length: int) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = max_length
        self.keys: Tensor | None = None  # (B, Hkv, max_length, D)
        self.values: Tensor | None = None  # (B, Hkv, max_length, Dv)
        self.position = 0
        # (B,) left-padding slots per row (None: no padding). Slot j of row b holds the token at
        # position j - pads[b]; slots j < pads[b] are pads that no query may see.
        self.pads: Tensor | None = None

    def query_positions(self, length: int, device: torch.device | None = None) -> Tensor:
        slots = super().query_positions(length, device)  # (L,)
        if self.pads is None:
            return slots
        # Pad slots get position 0: their outputs are never used, only their keys are masked.
        return (slots[None, :] - self.pads.to(slots.device)[:, None]).clamp(min=0)  # (B, L)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Mask | None]:
        new = k.shape[2]
        if self.position + new > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {self.position} are "
                             f"used and {new} more were given. Build it with a larger max_length "
                             f"or use RollingKVCache")
        if self.keys is None or self.values is None:
            b, h, _, d = k.shape
            # empty, not zeros: only the written slots [:position] are ever read
            self.keys = k.new_empty(b, h, self.max_length, d)
            self.values = v.new_empty(b, h, self.max_length, v.shape[-1])
        for name, given, held in (("keys", k, self.keys), ("values", v, self.values)):
            # Assignment would silently broadcast a batch of 1 over the cached batch.
            if given.shape[:2] + given.shape[3:] != held.shape[:2] + held.shape[3:]:
                raise ValueError(f"new {name} have shape {tuple(given.shape)} but the cache holds "
                                 f"{tuple(held.shape)} (B, H, max_length, D); reset() the cache "
                                 f"to start another batch")
        end = self.position + new
        self.keys[:, :, self.position:end] = k  # in place: no reallocation per token
        self.values[:, :, self.position:end] = v
        self.position = end
        extra: Mask | None = None
        if self.pads is not None:
            # (B, S): True for real keys; the caller's causal mask does the rest.
            real = torch.arange(end, device=k.device)[None, :] >= self.pads.to(k.device)[:, None]
            extra = masks.padding(real)
        return self.keys[:, :, :end], self.values[:, :, :end], extra

    def reset(self) -> None:
        """Start over (same batch size); the padding is kept, set ``pads`` again to change it."""
        self.position = 0


class RollingKVCache(KVCache):
    """Keeps ``sink`` first tokens and the ``window`` most recent (current one included)."""

    def __init__(self, window: int, sink: int = 4) -> None:
        if window < 1 or sink < 0:
            raise ValueError(f"need window >= 1 and sink >= 0, got window={window}, sink={sink}")
        self.window, self.sink = window, sink
        self.reset()

    def reset(self) -> None:
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.key_positions = torch.zeros(0, dtype=torch.long)  # (S,) of the kept keys
        # Positions of the keys the last update returned (kept + new), for distance biases
        # such as ALiBi: after eviction the slot index no longer gives the distance.
        self.attended_positions = torch.zeros(0, dtype=torch.long)
        self.position = 0

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Mask | None]:
        new = k.shape[2]
        new_pos = torch.arange(self.position, self.position + new)
        keys = k if self.keys is None else torch.cat([self.keys, k], 2)
        values = v if self.values is None else torch.cat([self.values, v], 2)
        key_pos = torch.cat([self.key_positions, new_pos])
        self.position += new
        # What the new queries may see: causal, and within the window or among the sinks.
        q_pos = new_pos[:, None]
        allowed = (key_pos[None, :] <= q_pos) & (
            (q_pos - key_pos[None, :] < self.window) | (key_pos[None, :] < self.sink))
        # Keep only what a future query can still use.
        keep = (key_pos < self.sink) | (key_pos > self.position - 1 - self.window)
        self.keys, self.values = keys[:, :, keep], values[:, :, keep]
        self.key_positions = key_pos[keep]
        self.attended_positions = key_pos
        return keys, values, masks.dense(allowed.to(k.device))

    def equivalent_mask(self) -> Mask:
        """The full-sequence mask that token-by-token decoding with this cache reproduces."""
        return masks.causal() & (masks.sliding_window(self.window - 1) | masks.sink(self.sink))
