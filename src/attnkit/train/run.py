"""Loading a finished (or interrupted) run back: ``load_run(run_dir) -> LoadedRun``.

Used by ``attnkit eval`` / ``attnkit generate`` and by :mod:`attnkit.explain`::

    from attnkit.train import load_run
    run = load_run("runs/digits-vit-20261127-180000")
    run.model        # nn.Module in eval mode, on CPU, with the best weights
    run.task         # the attnkit.tasks.Task it was trained on (datasets, decode, ...)
    run.config       # the RunConfig (run.config.model is the ModelConfig)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from attnkit.errors import UsageError
from attnkit.models import build_model
from attnkit.train.checkpoint import load_weights, newest_intact_checkpoint
from attnkit.train.config import RunConfig, load_yaml, run_config_from_dict
from attnkit.train.rundir import STARTING_POINT_FOLDER

if TYPE_CHECKING:
    from attnkit.tasks.base import Task

__all__ = ["HF_FOLDER", "LoadedRun", "build_run_model", "load_run"]

#: A run fine-tuning a Hugging Face checkpoint keeps its starting point here (config.json +
#: model.safetensors, see attnkit.train.finetune); its config.json fixes the architecture.
HF_FOLDER = STARTING_POINT_FOLDER


@dataclass
class LoadedRun:
    """A trained model with everything needed to use it."""

    model: nn.Module  # in eval mode, on the device asked for (CPU by default)
    task: Task  # the task the model was trained on
    config: RunConfig  # the resolved run configuration
    run_dir: Path  # the run directory
    weights: Path  # which safetensors file the weights came from
    metrics: dict[str, Any] = field(default_factory=dict)  # RUN_DIR/metrics.json (may be empty)


def build_run_model(config: RunConfig, task: Task, run_dir: str | Path | None) -> nn.Module:
    """A run's model before training: built from ``config.model``, or, for a run fine-tuning a
    Hugging Face checkpoint, loaded from ``RUN_DIR/hf``."""
    folder = Path(run_dir) / HF_FOLDER if run_dir is not None else None
    if folder is not None and (folder / "config.json").is_file():
        from attnkit.hf import load

        return load(folder)
    return build_model(config.model, task)


def load_run(run_dir: str | Path, *, weights: str = "best", device: str = "cpu") -> LoadedRun:
    """Rebuild a run's model and task from ``RUN_DIR/config.yaml`` and load its weights.

    ``weights``: ``"best"`` (best validation weights; the newest intact checkpoint when the run
    has none yet) or ``"latest"`` (the newest intact checkpoint). Every file is verified
    against its checksum; a damaged one raises :class:`~attnkit.train.checkpoint.CheckpointError`
    naming it. ``device``: ``cpu``, ``cuda``, ``cuda:1``, ``auto`` ...
    """
    from attnkit.tasks import get_task
    from attnkit.train.distributed import pick_device

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory (no config.yaml); "
                                f"runs are created by 'attnkit train'")
    if weights not in ("best", "latest"):
        raise UsageError(f"weights must be 'best' or 'latest', got {weights!r}")
    target = pick_device(device)
    config = run_config_from_dict(load_yaml(config_path))
    task = get_task(config.task.name, **config.task.options)
    model = build_run_model(config, task, run_dir)
    best = run_dir / "best" / "model.safetensors"
    path = best if weights == "best" and best.is_file() else None
    if path is None:
        latest, problems = newest_intact_checkpoint(run_dir / "checkpoints")
        if latest is None:
            why = f": {'; '.join(problems)}" if problems else ""
            raise UsageError(f"{str(run_dir)!r} has no usable weights (no best/ and no intact "
                             f"checkpoint){why}")
        path = latest / "model.safetensors"  # verified with its checkpoint's manifest
    load_weights(model, path, verify=path.parent.name == "best")
    model.to(target).eval()
    metrics_path = run_dir / "metrics.json"
    metrics: dict[str, Any] = {}
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"{str(metrics_path)!r} is damaged: not valid JSON ({err})") from None
    return LoadedRun(model=model, task=task, config=config, run_dir=run_dir, weights=path,
                     metrics=metrics)
