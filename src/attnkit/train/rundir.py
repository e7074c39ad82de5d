"""Run directories: created fresh (never overwritten by accident), locked while a process writes
them, and checked before a resume changes anything.

- A new run refuses an existing directory unless ``overwrite=True`` (``--overwrite``), which
  empties it under the lock first. Auto-named runs (no ``name``) get a free ``-N`` suffix.
- ``RUN_DIR/.lock`` (filelock, an OS advisory lock released when the process ends, even by
  SIGKILL) stops two processes from writing one run.
- :func:`check_resume` compares the saved config with the resumed one: settings that change
  what the checkpoint means (task, architecture, data order) are refused; others are reported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from attnkit.errors import UsageError
from attnkit.train.config import RunConfig, config_changes

__all__ = ["LOCK_NAME", "RESUMABLE", "check_resume", "create_run_dir", "lock_run_dir",
           "write_config"]

LOCK_NAME = ".lock"
#: A fine-tuning run's starting checkpoint (a Hugging Face folder), see train/run.py.
STARTING_POINT_FOLDER = "hf"

#: Settings a resumed run may change: budgets, bookkeeping and where it runs. Everything else
#: (task, preset, model.*, the data order and the optimizer's numbers) would make the
#: checkpoint mean something else.
RESUMABLE = frozenset({
    "train.epochs", "train.max_steps", "train.max_minutes", "train.patience",
    "train.checkpoint_every", "train.checkpoint_minutes", "train.keep_checkpoints",
    "train.eval_batch_size", "train.num_threads", "train.progress", "train.tensorboard",
    "train.device", "train.precision", "train.ddp_find_unused_parameters", "out_dir", "name",
})



def lock_run_dir(run_dir: Path) -> FileLock:
    """Take ``RUN_DIR/.lock`` or raise :class:`UsageError` naming the directory."""
    lock = FileLock(str(run_dir / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"run directory {str(run_dir)!r} is in use by another attnkit process "
                         f"(lock {str(run_dir / LOCK_NAME)!r}); wait for it to finish, or use "
                         f"another --name") from None
    return lock


def _auto_name(config: RunConfig, task_name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{task_name}-{config.model.family}-{stamp}"


def create_run_dir(config: RunConfig, task_name: str, *, overwrite: bool = False
                   ) -> tuple[Path, FileLock]:
    """Create (and lock) the directory of a new run; see the module docstring for the rules."""
    parent = Path(config.out_dir)
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"out_dir {str(parent)!r} is a file, not a directory; choose another "
                         f"--out-dir")
    parent.mkdir(parents=True, exist_ok=True)
    if config.name is None:
        base = _auto_name(config, task_name)
        run_dir, suffix = parent / base, 1
        while True:
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                run_dir, suffix = parent / f"{base}-{suffix}", suffix + 1
        return run_dir, lock_run_dir(run_dir)
    run_dir = parent / config.name
    try:
        run_dir.mkdir()
    except FileExistsError:
        if not run_dir.is_dir():
            raise UsageError(f"{str(run_dir)!r} exists and is not a directory; choose another "
                             f"--name") from None
        if _holds_only_starting_point(run_dir):
            return run_dir, lock_run_dir(run_dir)
        if not overwrite:
            raise UsageError(f"run directory {str(run_dir)!r} already exists; continue it with "
                             f"--resume {run_dir}, pick another --name, or replace it with "
                             f"--overwrite") from None
        lock = lock_run_dir(run_dir)
        for entry in run_dir.iterdir():
            if entry.name != LOCK_NAME:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        return run_dir, lock
    return run_dir, lock_run_dir(run_dir)


def _holds_only_starting_point(run_dir: Path) -> bool:
    """A directory holding nothing but ``hf/`` is a fine-tuning run that
    :func:`attnkit.train.finetune.finetune` prepared (its starting checkpoint): it is new."""
    return {entry.name for entry in run_dir.iterdir()} == {STARTING_POINT_FOLDER}


def write_config(run_dir: Path, config: RunConfig) -> None:
    """``RUN_DIR/config.yaml``, atomically (temporary file + ``os.replace``)."""
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".config.yaml.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, run_dir / "config.yaml")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_resume(saved: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """The settings ``new`` changes relative to ``saved``; :class:`UsageError` if one of them
    cannot change on resume (see :data:`RESUMABLE`)."""
    changes = config_changes(saved, new)
    refused = [k for k in changes if k not in RESUMABLE]
    if refused:
        listed = ", ".join(f"{k} {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise UsageError(f"cannot resume with {listed}: the checkpoint was trained with the "
                         f"saved value(s); start a new run instead (drop --resume, give a new "
                         f"--name)")
    return changes
