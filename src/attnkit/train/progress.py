"""Progress display: a tqdm bar on a terminal, periodic plain lines otherwise (logs, CI, pipes).

A carriage-return bar written into a log file is one unreadable line per update; when stderr is
not a terminal the same calls print ``epoch 3/40: 120/400 steps, loss=0.1234 lr=1.2e-03`` at
most every ``every_seconds``, and a last one at the end of an epoch that printed any (a short
epoch prints none: the loop's own per-epoch line says enough).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm

__all__ = ["PlainProgress", "progress_bar"]


class PlainProgress:
    """The subset of tqdm's interface the training loop uses, as occasional plain lines."""

    def __init__(self, total: int, desc: str, *, every_seconds: float = 30.0,
                 stream: Any = None) -> None:
        self.total, self.desc, self.every = total, desc, every_seconds
        self.stream = stream if stream is not None else sys.stderr
        self.n, self.postfix = 0, ""
        self._last = time.monotonic()
        self._printed = 0  # steps covered by the last printed line

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.every:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def _line(self) -> None:
        self._last, self._printed = time.monotonic(), self.n
        print(f"{self.desc}: {self.n}/{self.total} steps" + (f", {self.postfix}"
              if self.postfix else ""), file=self.stream, flush=True)

    def close(self) -> None:
        if self._printed and self.n > self._printed:
            self._line()


def progress_bar(total: int, desc: str, *, enabled: bool) -> Any:
    """tqdm on a terminal, :class:`PlainProgress` when stderr is redirected, a silent tqdm when
    ``enabled`` is False."""
    if enabled and not sys.stderr.isatty():
        return PlainProgress(total, desc)
    return tqdm(total=total, desc=desc, leave=False, disable=not enabled)
