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

from attnkit.train.config import RunConfig, apply_overrides, resolve_for_task
from attnkit.train.loop import TrainResult, train

__all__ = ["DEMO_CONFIG", "DEMO_HOOKS", "run_demo"]

#: The demo run is `attnkit train --task digits`: the task suggests the ViT preset
#: ``vit_tiny_digits`` and its tuned training settings (``attnkit.tasks.digits.TUNED_TRAINING``),
#: so both commands take one path and reach the same accuracy.
DEMO_CONFIG: dict[str, Any] = {"task": {"name": "digits"}, "model": {"family": "vit"}}

DEMO_HOOKS: list[Callable[[TrainResult, RunConfig], None]] = []


def run_demo(*, overrides: list[str] | None = None, out_dir: str = "runs",
             progress: bool = True, device: str | None = None) -> TrainResult:
    """Train the demo configuration, print the test accuracy and run directory, run the hooks."""
    raw = apply_overrides({**DEMO_CONFIG, "out_dir": out_dir}, overrides or [])
    raw["train"] = {"progress": progress, **raw.get("train", {})}
    if device is not None:
        raw["train"]["device"] = device
    config, task = resolve_for_task(raw)
    result = train(config, task=task)
    accuracy = result.test.get("accuracy", float("nan"))
    print(f"\ndigits test accuracy: {accuracy * 100:.2f}% after {result.train_seconds:.1f} s "
          f"of training ({result.steps} steps)")
    print(f"run directory: {result.run_dir}")
    for hook in DEMO_HOOKS:
        hook(result, config)
    return result
