"""Ctrl-C and SIGTERM stop a run at the next step boundary, after a checkpoint.

Inside :class:`StopRequests` the first SIGINT / SIGTERM only records the request; the training
loop checks it after every optimizer step, saves a checkpoint and raises
:class:`TrainingInterrupted`, whose message says how to resume. A second signal stops at once
(the previous checkpoint stays). Outside the main thread signals cannot be caught and the
context does nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["StopRequests", "TrainingInterrupted"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request after saving a checkpoint (``run_dir``, ``step``)."""

    def __init__(self, run_dir: Path, step: int, epoch: int, signal_name: str) -> None:
        super().__init__(f"{signal_name}: stopped at step {step} (epoch {epoch}) after saving a "
                         f"checkpoint; resume with: attnkit train --resume {run_dir}")
        self.run_dir, self.step, self.epoch, self.signal_name = run_dir, step, epoch, signal_name


class StopRequests:
    """Records SIGINT / SIGTERM while active; ``requested`` names the signal, or is None."""

    def __init__(self, *, announce: bool = True) -> None:
        self.requested: str | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # second signal: stop now
            self._restore()
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        if self.announce:
            print(f"\n{self.requested}: stopping after this step and saving a checkpoint "
                  f"(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc: object) -> None:
        self._restore()
