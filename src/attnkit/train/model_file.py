"""A model's weights as one safetensors file, tied weights stored once, any memory layout.

The file is the one ``safetensors.torch.save_model`` writes (every tensor contiguous; of the
names that share one tensor, the first in sorted order is stored and the others are recorded in
the metadata as ``{alias: stored name}``), and :func:`load_model_file` reads files written by
either. safetensors' own functions cannot be used for attnkit's language models: finding shared
tensors there flattens them with ``view(-1)``, which fails for the input-major weights of
:mod:`attnkit.models.weight_layout` (a tied embedding table is both shared and strided).
Loading copies into the existing parameters, so their layout stays what the model chose.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["load_model_file", "save_model_file", "shared_names"]


def shared_names(model: nn.Module) -> list[list[str]]:
    """Groups (sorted, two or more) of ``state_dict`` names that hold the same tensor (tied
    weights), in the order of their first name."""
    in_state = set(model.state_dict(keep_vars=True))
    groups: dict[int, list[str]] = {}
    for name, tensor in (*model.named_parameters(remove_duplicate=False),
                         *model.named_buffers(remove_duplicate=False)):
        if name in in_state:
            groups.setdefault(id(tensor), []).append(name)
    return sorted(sorted(names) for names in groups.values() if len(names) > 1)


def save_model_file(model: nn.Module, path: str | Path) -> None:
    """Write ``model``'s ``state_dict`` to ``path`` (not atomic: callers write a temporary
    file and rename it)."""
    state = model.state_dict()
    aliases = {alias: names[0] for names in shared_names(model) for alias in names[1:]}
    tensors = {name: t.detach().contiguous() for name, t in state.items() if name not in aliases}
    save_file(tensors, str(path), metadata=aliases or None)


def load_model_file(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy the tensors of ``path`` into ``model``; returns (missing, unexpected) names, where
    a tied name counts as loaded when any name of its group was in the file."""
    tensors = load_file(str(path))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    loaded_through_alias = {name for names in shared_names(model)
                            if any(n in tensors for n in names) for name in names}
    return [m for m in missing if m not in loaded_through_alias], list(unexpected)
