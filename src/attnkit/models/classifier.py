"""One classifier shared by the encoder, ViT and audio families; they differ in the input embedding.

Shape legend: B batch, N input tokens (tokens / patches / frames), D model width, C classes.

    h = embed(x)                       # (B, N, D), plus which tokens are real
    h = [cls; h] + positions           # class token prepended if pooling == "cls"
    h = stack(h, mask=padding)         # (B, N(+1), D)
    logits = head(pool(h))             # (B, C)

Pooling: ``cls`` (a learned class token is prepended and read out), ``first`` (the input's own
first token is read out: BERT's [CLS] comes from the tokenizer) or ``mean`` over real tokens.
The head is a Linear by default; BERT-style models pass a pooler + classifier (``ClassifierHead``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnkit.functional import masks
from attnkit.models.blocks import TransformerStack

__all__ = ["POOLINGS", "ClassifierHead", "TransformerClassifier", "valid_from_lengths"]

POOLINGS = ("cls", "first", "mean")


def valid_from_lengths(lengths: Tensor | None, n: int, batch: int, device: torch.device
                       ) -> Tensor | None:
    """(B, N) bool: True for real positions, or None when every position is real."""
    if lengths is None:
        return None
    return torch.arange(n, device=device)[None, :] < lengths.to(device)[:, None]


class ClassifierHead(nn.Module):
    """BERT's head: ``classifier(dropout(tanh(pooler(h_first))))``; (B, D) -> (B, C).

    ``classifier=None`` keeps only the pooler (a bare encoder's pooled output, (B, D)).
    """

    def __init__(self, *, pooler: nn.Linear, classifier: nn.Linear | None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.pooler, self.classifier = pooler, classifier
        self.dropout = nn.Dropout(dropout)

    def forward(self, pooled: Tensor) -> Tensor:
        h = torch.tanh(self.pooler(pooled))  # (B, D)
        return h if self.classifier is None else self.classifier(self.dropout(h))


class TransformerClassifier(nn.Module):
    """Sequence classifier over any input embedding.

    ``embed(x, lengths, **inputs)`` returns ``(h (B, N, D), valid (B, N) bool or None)``;
    extra keyword ``inputs`` (e.g. ``token_types``) go to the embedding unchanged.
    ``head`` defaults to ``Linear(dim, num_classes)``.
    """

    def __init__(self, *, embed: nn.Module, positions: nn.Module, stack: TransformerStack,
                 num_classes: int, dim: int, pooling: str = "cls", dropout: float = 0.0,
                 head: nn.Module | None = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.embed, self.positions, self.stack = embed, positions, stack
        self.pooling = pooling
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if pooling == "cls" else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes) if head is None else head

    def hidden_states(self, x: Tensor, lengths: Tensor | None = None, **inputs: Tensor
                      ) -> tuple[Tensor, Tensor | None]:
        """Last-layer states (B, N', D) (N' = N + 1 with a class token) and which are real."""
        h, valid = self.embed(x, lengths, **inputs)  # (B, N, D), (B, N) | None
        if self.cls_token is not None:
            h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1)
            if valid is not None:
                valid = torch.cat([valid.new_ones(valid.shape[0], 1), valid], dim=1)
        h = self.dropout(self.positions(h))
        mask = masks.padding(valid) if valid is not None else None
        return self.stack(h, mask=mask), valid  # (B, N', D)

    def features(self, x: Tensor, lengths: Tensor | None = None, **inputs: Tensor) -> Tensor:
        """Pooled representation (B, D)."""
        h, valid = self.hidden_states(x, lengths, **inputs)
        if self.pooling != "mean":
            return h[:, 0]
        if valid is None:
            return h.mean(1)
        weights = valid.to(h.dtype)[..., None]  # (B, N, 1)
        return (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, x: Tensor, lengths: Tensor | None = None, **inputs: Tensor) -> Tensor:
        """x: task input batch; lengths: (B,) real lengths of padded sequences -> (B, C)."""
        return self.head(self.features(x, lengths, **inputs))
