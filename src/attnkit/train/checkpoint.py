"""Checkpoints: safetensors for every tensor, JSON for everything else; never pickle.

Layout of ``RUN_DIR/checkpoints``::

    step-00000120/model.safetensors      model weights (tied weights stored once)
    step-00000120/state.safetensors      optimizer tensors and RNG states
    step-00000120/state.json             step, epoch, early-stopping state, optimizer scalars
    latest.json                          {"checkpoint": "step-00000120"}

A checkpoint directory is written under a temporary name and renamed into place; only then does
``latest.json`` (itself written to a temporary file and ``os.replace``-d) point to it. A run
killed at any moment therefore leaves ``latest.json`` naming a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

__all__ = ["atomic_write_json", "flatten_state", "latest_checkpoint", "load_checkpoint",
           "load_weights", "save_checkpoint", "save_weights", "unflatten_state"]

LATEST = "latest.json"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace`` (all or nothing)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def flatten_state(obj: Any, tensors: dict[str, Tensor] | None = None, prefix: str = "s"
                  ) -> tuple[Any, dict[str, Tensor]]:
    """Split a nested state (dicts, lists, tensors, scalars) into a JSON skeleton and tensors.

    Tensors become ``{"__tensor__": key}``; dicts keep their key types as ``{"__items__": [[k,
    v], ...]}`` (optimizer state is keyed by int); tuples become lists.
    """
    tensors = {} if tensors is None else tensors
    if isinstance(obj, Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}, tensors
    if isinstance(obj, dict):
        items = []
        for i, (k, v) in enumerate(obj.items()):
            if not isinstance(k, int | str):
                raise ValueError(f"cannot store a state dict key of type {type(k).__name__}")
            items.append([k, flatten_state(v, tensors, f"{prefix}.{i}")[0]])
        return {"__items__": items}, tensors
    if isinstance(obj, list | tuple):
        return [flatten_state(v, tensors, f"{prefix}.{i}")[0] for i, v in enumerate(obj)], tensors
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj, tensors
    raise ValueError(f"cannot store a value of type {type(obj).__name__} in a checkpoint")


def unflatten_state(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        return {k: unflatten_state(v, tensors) for k, v in skeleton["__items__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)  # DDP wraps the model in .module
    return inner if isinstance(inner, nn.Module) else model


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Model weights to a safetensors file, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_model(_unwrap(model), str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_weights(model: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {str(path)!r}")
    missing, unexpected = load_model(_unwrap(model), str(path), strict=False)
    if missing or unexpected:
        raise ValueError(f"weights in {str(path)!r} do not fit the model: missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; was the "
                         f"run's config changed?")


def save_checkpoint(root: str | Path, *, step: int, model: nn.Module, state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write a complete checkpoint for ``step`` and point ``latest.json`` at it.

    ``state`` may hold tensors anywhere (optimizer state, RNG states): they go to safetensors.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.tmp-"))
    try:
        save_model(_unwrap(model), str(tmp / "model.safetensors"))
        skeleton, tensors = flatten_state(state)
        save_file(tensors, str(tmp / "state.safetensors"))
        with open(tmp / "state.json", "w") as f:
            json.dump(skeleton, f)
        for file in tmp.iterdir():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a re-save of the same step (e.g. after resuming): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    atomic_write_json(root / LATEST, {"checkpoint": name, "step": step})
    _prune(root, keep=keep, current=name)
    return final


def _prune(root: Path, *, keep: int, current: str) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and ".tmp-" not in p.name)
    for old in steps[: max(len(steps) - max(keep, 1), 0)]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint directory ``latest.json`` names, or None when there is none."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    name = json.loads(pointer.read_text())["checkpoint"]
    path = Path(root) / name
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{str(pointer)!r} names {name!r}, which is incomplete or gone")
    return path


def load_checkpoint(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Load weights into ``model``; return the state (tensors restored in place of markers)."""
    path = Path(path)
    load_weights(model, path / "model.safetensors")
    tensors = load_file(str(path / "state.safetensors"))
    skeleton = json.loads((path / "state.json").read_text())
    state: dict[str, Any] = unflatten_state(skeleton, tensors)
    return state

