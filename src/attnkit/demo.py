"""``attnkit demo``: train the default model (a small ViT on the digits task), then explain it.

The demo sits above :mod:`attnkit.train` and :mod:`attnkit.explain` and calls both: it trains,
prints the test accuracy and the run directory, and writes the HTML attention report of the
first test example into the run directory. :func:`run_demo` does all of it from Python too.
"""

from __future__ import annotations

import argparse
from typing import Any

from attnkit.cli_options import add_device_option
from attnkit.explain import write_demo_report
from attnkit.train.config import apply_overrides, resolve_for_task
from attnkit.train.loop import TrainResult, train

__all__ = ["DEMO_CONFIG", "register", "run_demo"]

#: The demo run is `attnkit train --task digits`: the task suggests the ViT preset
#: ``vit_tiny_digits`` and its tuned training settings (``attnkit.tasks.digits.TUNED_TRAINING``),
#: so both commands take one path and reach the same accuracy.
DEMO_CONFIG: dict[str, Any] = {"task": {"name": "digits"}, "model": {"family": "vit"}}


def run_demo(*, overrides: list[str] | None = None, out_dir: str = "runs",
             progress: bool = True, report: bool = True,
             device: str | None = None) -> TrainResult:
    """Train the demo configuration, print the test accuracy and run directory, and (with
    ``report``) write ``RUN_DIR/explain.html``. Returns the training result."""
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
    if report:
        print(f"attention report: {write_demo_report(result.run_dir)}")
    return result


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(overrides=list(args.set or []), out_dir=args.out_dir,
             progress=not args.no_progress, device=args.device)
    return 0


def register(subparsers: Any) -> None:
    """Add ``demo`` to the ``attnkit`` command."""
    p = subparsers.add_parser("demo", help="train the default model (digits, small ViT) and "
                              "print its test accuracy",
                              description="Train a small ViT on scikit-learn's digits, print "
                                          "the test accuracy and the run directory, and write "
                                          "the attention report RUN_DIR/explain.html.")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a demo config value, e.g. train.epochs=10")
    p.add_argument("--out-dir", default="runs", dest="out_dir")
    p.add_argument("--no-progress", action="store_true")
    add_device_option(p, default="auto")
    p.set_defaults(handler=_cmd_demo)
