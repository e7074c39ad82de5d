"""``build_attention(kind, dim=..., num_heads=..., **options)``: every kind by name.

Kinds register themselves with :func:`register_attention`; the test grid and the CLI read
:func:`list_attention_kinds`, so a new kind is tested and selectable the day it lands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from attnkit.layers.base import AttentionLayer

__all__ = ["AttentionKind", "build_attention", "get_attention_kind", "list_attention_kinds",
           "register_attention"]


@dataclass(frozen=True)
class AttentionKind:
    name: str  # the name users pass
    summary: str  # one line: what it is and the paper
    factory: Callable[..., AttentionLayer]  # called as factory(dim=..., num_heads=..., **options)


_KINDS: dict[str, AttentionKind] = {}


def register_attention(name: str, summary: str) -> Callable[[Callable[..., AttentionLayer]],
                                                             Callable[..., AttentionLayer]]:
    """Decorator registering a layer class (or factory) under ``name``."""

    def wrap(factory: Callable[..., AttentionLayer]) -> Callable[..., AttentionLayer]:
        _KINDS[name] = AttentionKind(name, summary, factory)
        return factory

    return wrap


def _load_builtin_kinds() -> None:
    # Importing the package registers every built-in kind.
    import attnkit.layers  # noqa: F401


def list_attention_kinds() -> dict[str, str]:
    """Registered kinds: name -> one-line description."""
    _load_builtin_kinds()
    return {k.name: k.summary for k in _KINDS.values()}


def get_attention_kind(kind: str) -> AttentionKind | None:
    """The registration of ``kind`` (name, summary, factory), or None if none has that name."""
    _load_builtin_kinds()
    return _KINDS.get(kind)


def build_attention(kind: str, *, dim: int, num_heads: int, **options: Any) -> AttentionLayer:
    """Build attention layer ``kind`` for width ``dim`` with ``num_heads`` heads."""
    _load_builtin_kinds()
    if kind not in _KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; registered kinds: {sorted(_KINDS)}")
    try:
        return _KINDS[kind].factory(dim=dim, num_heads=num_heads, **options)
    except TypeError as err:
        raise TypeError(f"attention kind {kind!r}: {err}") from err
