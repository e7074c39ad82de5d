"""``attnkit demo``: train the default model (a small ViT on the digits task) and report.

Other areas add steps after training by appending to :data:`DEMO_HOOKS` (for example
:mod:`attnkit.explain` writes an HTML report): each hook is called as
``hook(result, config)`` with the :class:`~attnkit.train.loop.TrainResult` and the
:class:`~attnkit.train.config.RunConfig`, after the accuracy has been printed. A good place to
append is the area's ``commands.register`` (the CLI imports every command module).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attnkit.train.config import RunConfig, apply_overrides, resolve_config
from attnkit.train.loop import TrainResult, train

__all__ = ["DEMO_CONFIG", "DEMO_HOOKS", "run_demo"]

#: The demo run: digits, ViT with the task's suggested preset, tuned to pass 97% test accuracy
#: in well under two minutes on a 2-core CPU.
DEMO_CONFIG: dict[str, Any] = {
    "task": {"name": "digits"},
    "model": {"family": "vit"},
    # One thread: this model's matmuls are too small to gain from two, and on a shared
    # 2-core machine a second thread mostly waits (measured about 2x faster with one).
    "train": {"epochs": 50, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.05,
              "label_smoothing": 0.1, "warmup_fraction": 0.05, "seed": 0, "num_threads": 1},
}

DEMO_HOOKS: list[Callable[[TrainResult, RunConfig], None]] = []


def run_demo(*, overrides: list[str] | None = None, out_dir: str = "runs",
             progress: bool = True, device: str | None = None) -> TrainResult:
    """Train the demo configuration, print the test accuracy and run directory, run the hooks."""
    from attnkit.tasks import get_task

    raw = apply_overrides({**DEMO_CONFIG, "out_dir": out_dir}, overrides or [])
    raw["train"] = {"progress": progress, **raw.get("train", {})}
    if device is not None:
        raw["train"]["device"] = device
    task = get_task(raw["task"]["name"], **raw["task"].get("options", {}))
    config = resolve_config(raw, family="vit", preset_hints=task.extra.get("presets"))
    result = train(config, task=task)
    accuracy = result.test.get("accuracy", float("nan"))
    print(f"\ndigits test accuracy: {accuracy * 100:.2f}% after {result.train_seconds:.1f} s "
          f"of training ({result.steps} steps)")
    print(f"run directory: {result.run_dir}")
    for hook in DEMO_HOOKS:
        hook(result, config)
    return result
