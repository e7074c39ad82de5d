"""A batch of prompts of different lengths, as generation needs it: left-padded.

Callers give either right-padded ids with ``lengths`` or ids with an ``attention_mask`` (1 = real
token, padding on either side). Generation runs them left-padded, so every row's last prompt
token sits in the same column and each new token is written to the same cache slot; rows then
differ only in how many pad slots precede them (``pads``), which the KV cache masks out.

Shape legend: B batch, L padded prompt length, N new tokens.

Plain PyTorch equivalent of :meth:`PromptBatch.from_lengths` for one row ``b``::

    left_padded[b] = cat(full(L - lengths[b], pad), tokens[b, :lengths[b]])
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PromptBatch", "stop_token_ids"]


@dataclass(frozen=True)
class PromptBatch:
    """Prompts of (possibly) different lengths, left-padded."""

    tokens: Tensor  # (B, L) left-padded ids; pad slots hold a valid id (the first token)
    lengths: Tensor  # (B,) real tokens per prompt, >= 1

    @property
    def pads(self) -> Tensor:
        """(B,) pad slots in front of each row."""
        return self.tokens.shape[1] - self.lengths

    @property
    def uneven(self) -> bool:
        return bool((self.lengths != self.tokens.shape[1]).any())

    def row(self, b: int) -> Tensor:
        """Prompt ``b`` alone, (1, lengths[b])."""
        return self.tokens[b:b + 1, int(self.pads[b]):]

    @classmethod
    def build(cls, prompt: Tensor, *, lengths: Tensor | list[int] | None = None,
              attention_mask: Tensor | None = None) -> PromptBatch:
        """From ``prompt`` (B, L) ids and at most one of ``lengths`` (B,) (right padding) or
        ``attention_mask`` (B, L) (1 = real token; the real tokens of a row are contiguous)."""
        if prompt.dim() != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt must be (batch, length>=1) token ids, got "
                             f"{tuple(prompt.shape)}")
        if lengths is not None and attention_mask is not None:
            raise ValueError("give lengths (right-padded prompts) or attention_mask, not both")
        batch, width = prompt.shape
        if attention_mask is not None:
            starts, counts = _spans(attention_mask, (batch, width))
        elif lengths is not None:
            counts = torch.as_tensor(lengths, device=prompt.device)
            if counts.shape != (batch,) or counts.is_floating_point():
                raise ValueError(f"lengths must be {batch} integers (one per prompt), got "
                                 f"{counts.dtype} of shape {tuple(counts.shape)}")
            starts = torch.zeros_like(counts)
        else:
            return cls(prompt, torch.full((batch,), width, device=prompt.device))
        counts = counts.long().to(prompt.device)
        if bool((counts < 1).any()) or bool((counts > width).any()):
            raise ValueError(f"every prompt needs 1 to {width} tokens (the padded width), got "
                             f"lengths {counts.tolist()}")
        # Right-align: slot j of row b takes column starts[b] + j - pads[b]; the pad slots repeat
        # the first real token, so they hold a valid id whatever the caller padded with.
        slots = torch.arange(width, device=prompt.device)[None, :]  # (1, L)
        pads = (width - counts)[:, None]  # (B, 1)
        source = starts.long().to(prompt.device)[:, None] + (slots - pads).clamp(min=0)
        return cls(torch.gather(prompt, 1, source), counts)

    def assemble(self, new: Tensor, pad_id: int) -> Tensor:
        """Prompts followed by their new tokens ``new`` (B, N), right-padded with ``pad_id``:
        (B, max(lengths) + N). Row ``b`` is ``prompt_b, new[b]``, then pads."""
        batch, width = self.tokens.shape
        if not self.uneven:
            return torch.cat([self.tokens, new], dim=1)
        longest = int(self.lengths.max())
        out = self.tokens.new_full((batch, longest + new.shape[1]), pad_id)
        for b in range(batch):
            n = int(self.lengths[b])
            out[b, :n] = self.tokens[b, width - n:]
            out[b, n:n + new.shape[1]] = new[b]
        return out


def _spans(attention_mask: Tensor, shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """First real column and count of real tokens per row of a 0/1 mask."""
    if tuple(attention_mask.shape) != shape:
        raise ValueError(f"attention_mask must match the prompt's shape {shape}, got "
                         f"{tuple(attention_mask.shape)}")
    real = attention_mask.bool()
    counts = real.sum(1)  # (B,)
    starts = real.int().argmax(1)  # first True (0 for an empty row, refused below)
    columns = torch.arange(shape[1], device=real.device)[None, :]
    contiguous = real == ((columns >= starts[:, None]) & (columns < (starts + counts)[:, None]))
    if not bool(contiguous.all()):
        bad = (~contiguous.all(1)).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask rows {bad} have gaps; each prompt's real tokens must "
                         f"be contiguous (padding only on the left or right)")
    return starts, counts


def stop_token_ids(eos_id: int | Collection[int] | None, device: torch.device) -> Tensor | None:
    """The stop tokens as a 1-D tensor (None: never stop early)."""
    if eos_id is None:
        return None
    ids = [eos_id] if isinstance(eos_id, int) else sorted(eos_id)
    if not ids or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise ValueError(f"eos_id must be a token id or a non-empty set of ids >= 0, got "
                         f"{eos_id!r}")
    return torch.tensor(ids, device=device)
