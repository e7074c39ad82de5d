"""Taking a checkpoint's tensors one name at a time, so nothing is silently left over.

Shared by the per-architecture converters (gpt2, bert, vit).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

__all__ = ["NamePairs", "TensorTaker", "affine_pairs", "block_pairs", "require_options"]


class TensorTaker:
    """Tensors by Hugging Face name, with an optional prefix to strip (``transformer.``,
    ``bert.``, ``vit.``) and a record of what was taken.

    ``finish()`` raises if tensors the converter did not understand remain, naming them: a
    checkpoint with extra parts (an extra head, adapters) is refused rather than half-loaded.
    """

    def __init__(self, tensors: dict[str, Tensor], *, prefixes: Iterable[str] = (),
                 ignore: Iterable[str] = ()) -> None:
        self.tensors: dict[str, Tensor] = {}
        prefixes = tuple(prefixes)
        for name, value in tensors.items():
            for prefix in prefixes:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    break
            self.tensors[name] = value
        self.ignore = tuple(ignore)

    def has(self, name: str) -> bool:
        return name in self.tensors

    def take(self, name: str) -> Tensor:
        if name not in self.tensors:
            near = sorted(self.tensors)[:8]
            raise ValueError(f"the checkpoint has no tensor {name!r} (it has e.g. {near}); is "
                             f"it a checkpoint of the architecture its config names?")
        return self.tensors.pop(name)

    def finish(self, what: str) -> None:
        left = sorted(k for k in self.tensors if not k.endswith(self.ignore))
        if left:
            raise ValueError(f"{what}: the checkpoint has tensors attnkit cannot place: "
                             f"{left[:10]}{' ...' if len(left) > 10 else ''}")


def require_options(config: dict[str, Any], what: str, rules: dict[str, tuple[Any, ...]]) -> None:
    """Refuse config options whose value is not among the supported ones, naming all of them.

    ``rules``: option name -> supported values (a missing option counts as its first value).
    """
    bad = []
    for option, supported in rules.items():
        value = config.get(option, supported[0])
        if value not in supported:
            bad.append(f"{option}={value!r} (supported: {', '.join(map(repr, supported))})")
    if bad:
        raise ValueError(f"{what}: unsupported config option(s): {'; '.join(bad)}")


#: (attnkit name, Hugging Face name) pairs; each pair is expanded to .weight and .bias.
NamePairs = list[tuple[str, str]]


def block_pairs(per_block: NamePairs, *, num_layers: int, ours: str, theirs: str) -> NamePairs:
    """Full (attnkit, Hugging Face) tensor names for every block's weights and biases.

    ``ours`` / ``theirs``: per-block prefixes with ``{i}`` for the layer index.
    """
    return [(f"{ours.format(i=i)}{a}.{p}", f"{theirs.format(i=i)}{b}.{p}")
            for i in range(num_layers) for a, b in per_block for p in ("weight", "bias")]


def affine_pairs(pairs: NamePairs) -> NamePairs:
    """Expand (attnkit module, Hugging Face module) pairs to their .weight and .bias tensors."""
    return [(f"{a}.{p}", f"{b}.{p}") for a, b in pairs for p in ("weight", "bias")]
