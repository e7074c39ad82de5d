"""Speed-ups measured side by side: the reference and each kind timed in the same round.

A length sweep measures the reference (``mha``) first and each other kind minutes later. On a
machine whose speed drifts (this project's 2-core VM runs the same call 1.8 s in one hour and
2.3 s in the next), the ratio of two timings taken that far apart carries the drift. Here, at
one length, every round times the reference once and then each kind (median of a few calls)
right after it, and a kind's speed-up is the median over the rounds of its per-round ratios.

Order inside a round, per mode (forward, then forward+backward)::

    reference, kind_1 x calls, kind_2 x calls, ...

so the reference's one long call and the kinds' short ones see the same stretch of the machine.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from attnkit.bench.harness import time_call, write_csv

__all__ = ["MODES", "Calls", "RoundTiming", "median_speedups", "read_timings_csv", "run_rounds",
           "write_timings_csv"]

#: The two timed modes, named as the sweep's time columns.
MODES = ("forward_s", "forward_backward_s")

#: What a caller hands over per kind: one forward call and one forward+backward call.
Calls = tuple[Callable[[], None], Callable[[], None]]


@dataclass(frozen=True)
class RoundTiming:
    """One kind's timing in one round, next to the reference's call of that round."""

    kind: str
    round: int
    mode: str  # one of MODES
    reference_s: float  # the reference's single call in this round
    kind_s: float  # median of the kind's calls right after it

    @property
    def speedup(self) -> float:
        return self.reference_s / self.kind_s if self.kind_s > 0 else math.nan


def run_rounds(reference: Calls, kinds: Mapping[str, Calls], *, rounds: int, calls: int,
               device: str = "cpu", log: Callable[[str], None] = print) -> list[RoundTiming]:
    """Time ``reference`` and every kind in ``rounds`` rounds; see the module docstring.

    Each kind gets one untimed call per mode first (allocator and kernel warm-up); the
    reference's calls are long enough to warm themselves up."""
    if rounds < 0 or calls < 1:
        raise ValueError(f"rounds must be >= 0 and calls >= 1, got rounds={rounds}, "
                         f"calls={calls}")
    for pair in kinds.values():
        for call in pair:
            call()
    timings: list[RoundTiming] = []
    for index in range(rounds):
        for mode_index, mode in enumerate(MODES):
            reference_s = time_call(reference[mode_index], device)
            for kind, pair in kinds.items():
                kind_s = statistics.median(time_call(pair[mode_index], device)
                                           for _ in range(calls))
                timings.append(RoundTiming(kind, index, mode, reference_s, kind_s))
        done = [t for t in timings if t.round == index]
        log(f"side by side, round {index + 1}/{rounds}: " + "; ".join(
            f"{t.kind} {'fwd' if t.mode == MODES[0] else 'f+b'} {t.speedup:.1f}x" for t in done))
    return timings


def median_speedups(timings: Sequence[RoundTiming]) -> dict[str, dict[str, float]]:
    """kind -> mode -> median over rounds of reference / kind."""
    ratios: dict[str, dict[str, list[float]]] = {}
    for t in timings:
        ratios.setdefault(t.kind, {}).setdefault(t.mode, []).append(t.speedup)
    return {kind: {mode: statistics.median(values) for mode, values in modes.items()}
            for kind, modes in ratios.items()}


def write_timings_csv(timings: Sequence[RoundTiming], path: Path) -> None:
    write_csv(path, [{"kind": t.kind, "round": t.round, "mode": t.mode,
                      "reference_s": round(t.reference_s, 6), "kind_s": round(t.kind_s, 6),
                      "speedup": round(t.speedup, 3)} for t in timings])


def read_timings_csv(path: Path) -> list[RoundTiming]:
    with path.open(newline="") as fh:
        return [RoundTiming(row["kind"], int(row["round"]), row["mode"],
                            float(row["reference_s"]), float(row["kind_s"]))
                for row in csv.DictReader(fh)]
