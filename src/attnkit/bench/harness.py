"""Shared benchmark plumbing: timing, peak memory, matmul rate, CSV and tables.

Every suite (``attnkit bench attention``, ``attnkit bench kinds``, ...) measures with these
functions so that their numbers mean the same thing.

Timing: one warm-up call (compilation, page faults), then the median of ``repeats`` calls; if the
warm-up alone took longer than ``long_s`` a single timed call is made.

Peak memory on CPU: torch's CPU allocations are invisible to ``tracemalloc``, so the harness reads
the kernel's view of the process instead. Before the call it collects garbage, hands freed heap
memory back to the OS (``malloc_trim``), resets the peak resident set size (writing ``5`` to
``/proc/self/clear_refs``) and reads the current one; afterwards it reads the peak (``VmHWM``).
The difference is the memory the call touched on top of what was already resident, including its
outputs and gradients. It is an upper-level, page-granular measure of the whole process (another
thread allocating at the same time would be counted) and needs Linux; elsewhere it is reported as
missing. On CUDA it is ``torch.cuda.max_memory_allocated`` after a reset.
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Measurement", "PeakMemory", "distinct_colours", "environment", "format_table",
           "markdown_table", "matmul_gflops", "measure", "time_call", "write_csv", "write_outputs"]

_MIB = 1024 * 1024


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


class PeakMemory:
    """Peak extra memory of a block of code: ``with PeakMemory(device) as m: ...; m.mib``."""

    _libc = _libc()

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.mib: float = math.nan  # peak extra MiB, NaN when it cannot be measured
        self._base_kib: int | None = None

    @classmethod
    def cpu_supported(cls) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            return False
        return _proc_status_kib("VmHWM") is not None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base_kib = torch.cuda.memory_allocated(self.device) // 1024
            return self
        if self._libc is not None and hasattr(self._libc, "malloc_trim"):
            self._libc.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident size
        except OSError:
            self._base_kib = None
            return self
        self._base_kib = _proc_status_kib("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._base_kib is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) // 1024
        else:
            peak_or_none = _proc_status_kib("VmHWM")
            if peak_or_none is None:
                return
            peak = peak_or_none
        self.mib = max(0, peak - self._base_kib) / 1024


@dataclass
class Measurement:
    """Median time and peak memory of repeated calls."""

    seconds: float  # median wall time of the timed calls
    peak_mib: float  # peak extra memory of the measured call (NaN: not measured)
    repeats: int  # number of timed calls
    samples: list[float] = field(default_factory=list)  # every timed call, seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device | str = "cpu") -> float:
    """Wall time of one call of ``fn`` in seconds, waiting for the device to finish."""
    device = torch.device(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    seconds = time.perf_counter() - start
    del result
    return seconds


def measure(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1, long_s: float = 5.0,
            device: torch.device | str = "cpu") -> Measurement:
    """Time ``fn`` (median of ``repeats`` after ``warmup`` calls) and its peak memory.

    The peak comes from one more, untimed call: :class:`PeakMemory` first hands freed memory
    back to the system so the peak starts from a clean baseline, and the page faults that then
    follow would otherwise land in the timings (performer at L = 32k, which allocates many
    mid-size temporaries: 2.44 s forward under the old scheme, 1.91 s timed directly). The timed
    calls run in steady state, as in a training loop. A single call (no warm-up, or a warm-up
    longer than ``long_s``) is timed and measured at once: at that length the faults are noise,
    and a second call would double the cost.
    """
    device = torch.device(device)
    first = math.inf
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        _sync(device)
        if i == 0:
            first = time.perf_counter() - start
    if first > long_s:
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            result = fn()
            _sync(device)
            seconds = time.perf_counter() - start
            del result
        return Measurement(seconds, mem.mib, 1, [seconds])
    with PeakMemory(device) as mem:
        result = fn()
        _sync(device)
        del result
    samples = [time_call(fn, device) for _ in range(max(1, repeats))]
    return Measurement(statistics.median(samples), mem.mib, len(samples), samples)


def matmul_gflops(size: int = 2048, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu", repeats: int = 5) -> float:
    """This machine's dense matmul rate in GFLOP/s (2 n^3 flops per n x n product)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    m = measure(lambda: a @ b, repeats=repeats, device=device)
    return 2 * size**3 / m.seconds / 1e9


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows (dicts with the same keys, in order) as CSV, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        path.write_text("")
        return
    keys = list(rows[0])
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.2e}"
    return "-" if value is None else str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width text table of ``columns`` of ``rows``."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub Markdown table of ``columns`` of ``rows`` (numbers formatted as in the text
    table; ``|`` inside cells escaped)."""
    def cell(value: Any) -> str:
        return _cell(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# Dark, saturated colours that differ in hue (tab10, then Dark2 and Set1 for the rest): no pale
# twin of another line's colour, as tab20's pairs would give.
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#1b9e77", "#d95f02", "#7570b3", "#e7298a",
            "#66a61e", "#e6ab02", "#a6761d", "#000000", "#4daf4a", "#984ea3")


def distinct_colours(count: int) -> list[str]:
    """``count`` clearly different colours for plot lines (cycles past 20)."""
    return [_COLOURS[i % len(_COLOURS)] for i in range(count)]


def write_outputs(out_dir: Path, stem: str, rows: Sequence[dict[str, Any]],
                  columns: Sequence[str], *, plot: Callable[[Path], None] | None = None
                  ) -> list[Path]:
    """Every suite's outputs: ``<stem>.csv`` (all keys of ``rows``), ``<stem>.md`` (a Markdown
    table of ``columns``) and, when ``plot`` is given, ``<stem>.png`` drawn by ``plot(path)``.
    Returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.csv", out_dir / f"{stem}.md"]
    write_csv(paths[0], rows)
    paths[1].write_text(markdown_table(rows, columns))
    if plot is not None:
        paths.append(out_dir / f"{stem}.png")
        plot(paths[2])
    return paths


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What a reader needs to judge a timing: processor, torch, threads, and the machine's load
    when the run started (on a shared machine other processes take CPU time)."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
        "device": str(device)}
    if hasattr(os, "getloadavg"):
        info["load_1min"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
