"""Run bookkeeping: TensorBoard scalars, a metrics JSON per run, console lines.

Only the main process (rank 0) writes; other ranks get a logger that does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attnkit.errors import UsageError
from attnkit.train.checkpoint import atomic_write_json

__all__ = ["RunLogger"]


class RunLogger:
    """Writes ``RUN_DIR/metrics.json`` (history, best, test) and TensorBoard scalars."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.metrics_path = run_dir / "metrics.json"
        self.metrics: dict[str, Any] = {"history": [], "best": None, "test": None}
        if enabled and self.metrics_path.is_file():  # resuming: keep the earlier history
            try:
                self.metrics = json.loads(self.metrics_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise UsageError(f"{str(self.metrics_path)!r} is damaged: not valid JSON "
                                 f"({err}); move it away to start a fresh history") from None
        self.writer: Any = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def tensorboard_command(self) -> str:
        return f"tensorboard --logdir {self.run_dir / 'tensorboard'}"

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def epoch(self, record: dict[str, Any]) -> None:
        """Append one evaluation record to the history (dropping any later ones on resume)."""
        if not self.enabled:
            return
        history = [r for r in self.metrics["history"] if r["step"] < record["step"]]
        self.metrics["history"] = [*history, record]
        self.save()

    def update(self, **fields: Any) -> None:
        if self.enabled:
            self.metrics.update(fields)
            self.save()

    def save(self) -> None:
        if self.enabled:
            atomic_write_json(self.metrics_path, self.metrics)

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
