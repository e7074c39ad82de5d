"""Checkpoints: safetensors for every tensor, JSON for everything else; never pickle.

Layout of ``RUN_DIR/checkpoints``::

    step-00000120/model.safetensors      model weights (tied weights stored once)
    step-00000120/state.safetensors      optimizer tensors and RNG states
    step-00000120/state.json             step, epoch, early-stopping state, optimizer scalars
    step-00000120/manifest.json          SHA-256 and size of each file above
    latest.json                          {"checkpoint": "step-00000120"}

A checkpoint directory is written under a temporary name and renamed into place; only then does
``latest.json`` (itself written to a temporary file and ``os.replace``-d) point to it. A run
killed at any moment therefore leaves ``latest.json`` naming a complete checkpoint.

Every load verifies the checksums first, so a truncated, zeroed or bit-flipped file is reported
(:class:`CheckpointError`, one line naming the file) instead of loaded.
:func:`newest_intact_checkpoint` walks back to the newest checkpoint that verifies, which is
what ``--resume`` uses. Weights saved alone (``best/model.safetensors``) carry a
``model.safetensors.sha256`` file beside them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from attnkit.errors import UsageError
from attnkit.train.model_file import load_model_file, save_model_file

__all__ = ["CheckpointError", "atomic_write_json", "checkpoint_step", "flatten_state",
           "latest_checkpoint", "load_checkpoint", "load_weights", "newest_intact_checkpoint",
           "save_checkpoint", "save_weights", "unflatten_state", "verify_checkpoint"]

LATEST = "latest.json"
MANIFEST = "manifest.json"
_FILES = ("model.safetensors", "state.safetensors", "state.json")
_STEP_DIR = re.compile(r"step-(\d+)")


class CheckpointError(UsageError):
    """A checkpoint or weights file that is missing, damaged or does not fit (names the file)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


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


def _checksum_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Model weights to a safetensors file, atomically, with a ``.sha256`` file beside it.

    The checksum file is replaced first and the weights second: a kill between the two leaves
    old weights with a new checksum, which a load reports instead of trusting."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_model_file(_unwrap(model), tmp)
        _fsync_file(tmp)
        digest = _sha256(tmp)
        side = _checksum_path(path)
        side_tmp = side.with_name(f".{side.name}.tmp-{os.getpid()}")
        side_tmp.write_text(f"{digest}  {path.name}\n")
        os.replace(side_tmp, side)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _check_file(path: Path, expected: str | None, size: int | None = None) -> None:
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is missing")
    if size is not None and path.stat().st_size != size:
        raise CheckpointError(f"{str(path)!r} is damaged: {path.stat().st_size} bytes, the "
                              f"checkpoint recorded {size} (truncated or overwritten)")
    if expected is not None and _sha256(path) != expected:
        raise CheckpointError(f"{str(path)!r} is damaged: its SHA-256 checksum does not match "
                              f"the one recorded when it was written")


def load_weights(model: nn.Module, path: str | Path, *, verify: bool = True) -> None:
    """Load safetensors weights into ``model`` after checking the ``.sha256`` file beside them
    (weights saved before checksums existed load with a warning).

    Raises :class:`CheckpointError` (one line naming the file) when the file is missing, fails
    its checksum, is not safetensors, or does not fit the model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {str(path)!r}")
    if verify:
        side = _checksum_path(path)
        if side.is_file():
            recorded = side.read_text(errors="replace").split()
            _check_file(path, recorded[0] if recorded else "")
        else:  # written before checksums existed: say so rather than trust it silently
            warnings.warn(f"{str(path)!r} has no checksum file {side.name!r} beside it and is "
                          f"loaded unverified; re-save it with save_weights to add one",
                          stacklevel=2)
    try:
        missing, unexpected = load_model_file(_unwrap(model), path)
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file "
                              f"({' '.join(str(err).split())})") from None
    if missing or unexpected:
        raise CheckpointError(f"weights in {str(path)!r} do not fit the model: missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; was "
                              f"the run's config changed?")


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
        save_model_file(_unwrap(model), tmp / "model.safetensors")
        skeleton, tensors = flatten_state(state)
        save_file(tensors, str(tmp / "state.safetensors"))
        with open(tmp / "state.json", "w") as f:
            json.dump(skeleton, f)
        files: dict[str, dict[str, Any]] = {}
        for file in _FILES:
            _fsync_file(tmp / file)
            files[file] = {"sha256": _sha256(tmp / file), "bytes": (tmp / file).stat().st_size}
        manifest = {"step": step, "files": files}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2)
        _fsync_file(tmp / MANIFEST)
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{str(path)!r} is damaged: not valid JSON ({err})") from None


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint directory ``latest.json`` names, or None when there is none."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    data = _read_json(pointer)
    name = data.get("checkpoint") if isinstance(data, dict) else None
    if not isinstance(name, str) or not _STEP_DIR.fullmatch(name):
        raise CheckpointError(f"{str(pointer)!r} is damaged: it names no checkpoint directory")
    path = Path(root) / name
    if not (path / MANIFEST).is_file():
        raise CheckpointError(f"{str(pointer)!r} names {name!r}, which is incomplete or gone")
    return path


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint directory holds (from its name, ``step-00000120`` -> 120)."""
    match = _STEP_DIR.fullmatch(Path(path).name)
    if match is None:
        raise CheckpointError(f"{str(path)!r} is not a checkpoint directory (step-NNNNNNNN)")
    return int(match.group(1))


def verify_checkpoint(path: str | Path) -> None:
    """Check every file of a checkpoint against its manifest; :class:`CheckpointError` if not."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{str(path)!r} is incomplete: it has no {MANIFEST}")
    manifest = _read_json(manifest_path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or set(files) != set(_FILES):
        raise CheckpointError(f"{str(manifest_path)!r} is damaged: it does not list the files "
                              f"{list(_FILES)}")
    for name in _FILES:
        entry = files[name]
        if not isinstance(entry, dict):
            raise CheckpointError(f"{str(manifest_path)!r} is damaged: bad entry for {name!r}")
        _check_file(path / name, entry.get("sha256"), entry.get("bytes"))


def newest_intact_checkpoint(root: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint under ``root`` that verifies, and one line per damaged one skipped.

    ``latest.json`` is tried first; when it or its checkpoint is damaged, the ``step-*``
    directories are tried newest first. ``(None, problems)`` when none verifies."""
    root = Path(root)
    problems: list[str] = []
    candidates: list[Path] = []
    try:
        named = latest_checkpoint(root)
        if named is not None:
            candidates.append(named)
    except CheckpointError as err:
        problems.append(str(err))
    found = [p for p in root.glob("step-*") if p.is_dir() and _STEP_DIR.fullmatch(p.name)]
    candidates += sorted((p for p in found if p not in candidates), key=checkpoint_step,
                         reverse=True)
    for path in candidates:
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        return path, problems
    return None, problems


def load_checkpoint(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Verify, then load weights into ``model``; return the state (tensors restored in place of
    markers). Raises :class:`CheckpointError` naming the damaged file."""
    path = Path(path)
    verify_checkpoint(path)
    load_weights(model, path / "model.safetensors", verify=False)
    try:
        tensors = load_file(str(path / "state.safetensors"))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{str(path / 'state.safetensors')!r} is not readable "
                              f"({' '.join(str(err).split())})") from None
    skeleton = _read_json(path / "state.json")
    try:
        state: dict[str, Any] = unflatten_state(skeleton, tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{str(path / 'state.json')!r} does not match its tensors "
                              f"({err})") from None
    return state
