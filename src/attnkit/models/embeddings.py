"""Input embeddings and absolute position encodings.

Shape legend: B batch, L length, D model width, V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnkit.functional.positional import sinusoidal_table
from attnkit.models.weight_layout import is_input_major

__all__ = ["EmbeddingNorm", "LearnedPositions", "NoPositions", "SinusoidalPositions",
           "TokenEmbedding", "build_positions"]


class TokenEmbedding(nn.Module):
    """Token ids (B, L) -> vectors (B, L, D), optionally scaled by sqrt(D) (Vaswani et al.)."""

    def __init__(self, *, vocab_size: int, dim: int, scale: bool = False) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, dim)
        # Small init (GPT-2): the table doubles as the output projection when tied, and
        # N(0, 1) rows would start the logits far from uniform.
        nn.init.normal_(self.table.weight, std=0.02)
        self.multiplier = math.sqrt(dim) if scale else 1.0

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"token inputs must be integer ids, got {tokens.dtype}")
        vocab = self.table.num_embeddings
        # The range check reads the data, which a traced graph (torch.compile, torch.export for
        # ONNX) cannot branch on: eager calls check, compiled ones index as nn.Embedding does.
        if (not torch.compiler.is_compiling() and tokens.numel()
                and (int(tokens.max()) >= vocab or int(tokens.min()) < 0)):
            raise ValueError(f"token ids must lie in [0, {vocab}), got range "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        weight = self.table.weight  # (V, D)
        if is_input_major(weight):
            # Tied to an input-major output projection (attnkit.models.weight_layout): the
            # table is the contiguous (D, V) matrix, so gather its columns. nn.Embedding would
            # read each vector at a stride of V floats (41 ms against 0.6 ms for 2,048 tokens
            # at GPT-2's 50257 x 768, and its gradient would need a transposing copy); this
            # takes 27 ms and its gradient lands in the table's own layout.
            flat = weight.t().index_select(1, tokens.reshape(-1))  # (D, B*L)
            vectors = flat.t().reshape(*tokens.shape, weight.shape[1]).contiguous()
        else:
            vectors = self.table(tokens)  # (B, L, D)
        return vectors * self.multiplier


class LearnedPositions(nn.Module):
    """Adds a learned vector per absolute position (GPT-2, BERT, ViT)."""

    def __init__(self, *, max_length: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(max_length, dim) * 0.02)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """x: (B, L, D) at positions offset..offset+L-1, or at the positions ``offset`` (B, L)
        (left-padded batches) -> (B, L, D)."""
        if isinstance(offset, Tensor):
            last = int(offset.max()) if offset.numel() else -1
            if last >= self.table.shape[0]:
                raise ValueError(f"position {last} is beyond the {self.table.shape[0]} learned "
                                 f"positions; raise model.max_length or use positional=rope")
            return x + self.table[offset]
        end = offset + x.shape[1]
        if end > self.table.shape[0]:
            raise ValueError(f"position {end - 1} is beyond the {self.table.shape[0]} learned "
                             f"positions; raise model.max_length or use positional=rope")
        return x + self.table[offset:end]


class EmbeddingNorm(nn.Module):
    """Positions added, then the summed embedding normalized (BERT: LayerNorm(word + position
    + segment)); (B, L, D) -> (B, L, D)."""

    def __init__(self, *, positions: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.positions, self.norm = positions, norm

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        return self.norm(self.positions(x, offset))


class SinusoidalPositions(nn.Module):
    """Adds the fixed sin/cos table (Vaswani et al., 2017)."""

    def __init__(self, *, max_length: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_length, dim), persistent=False)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """x: (B, L, D) at positions offset.. or at the positions ``offset`` (B, L)."""
        end = int(offset.max()) + 1 if isinstance(offset, Tensor) else offset + x.shape[1]
        table: Tensor = self.table  # type: ignore[assignment]
        if end > table.shape[0]:
            table = sinusoidal_table(end, x.shape[-1]).to(x.device)
        rows = table[offset] if isinstance(offset, Tensor) else table[offset:end]
        return x + rows.to(x.dtype)


class NoPositions(nn.Module):
    """No absolute positions (RoPE inside attention, or order-free inputs)."""

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        return x


def build_positions(kind: str, *, max_length: int, dim: int) -> nn.Module:
    """``learned`` | ``sinusoidal`` | ``rope`` / ``none`` (nothing added to the input)."""
    if kind == "learned":
        return LearnedPositions(max_length=max_length, dim=dim)
    if kind == "sinusoidal":
        return SinusoidalPositions(max_length=max_length, dim=dim)
    if kind in ("rope", "none"):
        return NoPositions()
    raise ValueError(f"unknown positional {kind!r}; choose learned, sinusoidal, rope or none")
