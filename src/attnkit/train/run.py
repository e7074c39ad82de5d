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

import yaml
from torch import nn

from attnkit.models import build_model
from attnkit.train.checkpoint import latest_checkpoint, load_weights
from attnkit.train.config import RunConfig, run_config_from_dict

if TYPE_CHECKING:
    from attnkit.tasks.base import Task

__all__ = ["HF_FOLDER", "LoadedRun", "build_run_model", "load_run"]

#: A run fine-tuning a Hugging Face checkpoint keeps its starting point here (config.json +
#: model.safetensors, see attnkit.train.finetune); its config.json fixes the architecture.
HF_FOLDER = "hf"


@dataclass
class LoadedRun:
    """A trained model with everything needed to use it."""

    model: nn.Module  # in eval mode, on CPU
    task: Task  # the task the model was trained on
    config: RunConfig  # the resolved run configuration
    run_dir: Path  # the run directory
    weights: Path  # which safetensors file the weights came from
    metrics: dict[str, Any] = field(default_factory=dict)  # RUN_DIR/metrics.json (may be empty)


def build_run_model(config: RunConfig, task: Task, run_dir: str | Path) -> nn.Module:
    """A run's model before training: built from ``config.model``, or, for a run fine-tuning a
    Hugging Face checkpoint, loaded from ``RUN_DIR/hf``."""
    folder = Path(run_dir) / HF_FOLDER
    if (folder / "config.json").is_file():
        from attnkit.hf import load

        return load(folder)
    return build_model(config.model, task)


def load_run(run_dir: str | Path, *, weights: str = "best") -> LoadedRun:
    """Rebuild a run's model and task from ``RUN_DIR/config.yaml`` and load its weights.

    ``weights``: ``"best"`` (best validation weights, falling back to the latest checkpoint)
    or ``"latest"`` (the latest checkpoint).
    """
    from attnkit.tasks import get_task

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory (no config.yaml); "
                                f"runs are created by 'attnkit train'")
    if weights not in ("best", "latest"):
        raise ValueError(f"weights must be 'best' or 'latest', got {weights!r}")
    try:
        raw = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{str(config_path)!r} is not valid YAML: {err}") from None
    config = run_config_from_dict(raw)
    task = get_task(config.task.name, **config.task.options)
    model = build_run_model(config, task, run_dir)
    best = run_dir / "best" / "model.safetensors"
    path = best if weights == "best" and best.is_file() else None
    if path is None:
        latest = latest_checkpoint(run_dir / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"{str(run_dir)!r} has no weights yet (no best/ and no "
                                    f"checkpoint)")
        path = latest / "model.safetensors"
    load_weights(model, path)
    model.eval()
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return LoadedRun(model=model, task=task, config=config, run_dir=run_dir, weights=path,
                     metrics=metrics)
