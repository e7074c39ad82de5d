"""``attnkit bench kinds``: time and peak memory of every attention kind against sequence length.

For each registered kind and each length L it measures, on self-attention of a (B, L, dim)
input without a mask:

- forward time (no autograd) and forward + backward time (gradients into input and weights),
- peak memory above what was resident before each call, measured by the shared
  :mod:`attnkit.bench.harness` (CPU: the process' resident high-water mark; CUDA:
  ``torch.cuda.max_memory_allocated``),

then fits the log-log slope of time and memory against L over the largest lengths, finds the
length where each kind becomes faster than exact attention (``mha``), and writes a CSV, a
log-log PNG and a text summary. Points whose projected time (from the previous length, assuming
quadratic growth) exceeds a budget are skipped and marked, except for ``mha``, the reference.

The speed-ups that the targets are checked on come from rounds at the largest length in which
the reference and each efficient kind are timed side by side (:mod:`attnkit.bench.side_by_side`;
the sweep measures them minutes apart, and this VM's speed drifts); the sweep's ratios are
printed next to them.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnkit.bench.harness import distinct_colours, markdown_table, measure, time_call, write_csv
from attnkit.bench.side_by_side import (
    MODES,
    Calls,
    RoundTiming,
    median_speedups,
    read_timings_csv,
    run_rounds,
    write_timings_csv,
)
from attnkit.layers import build_attention, list_attention_kinds

__all__ = ["KindsBenchConfig", "Measurement", "register", "run_kinds_benchmark"]

#: Options that make each kind's benchmark representative (documented in docs/attention-kinds.md).
BENCH_OPTIONS: dict[str, dict[str, Any]] = {
    "local": {"window": 256, "lookahead": 256},
    "adaptive_span": {"max_span": 1024, "span_init": 1.0},  # fully grown span: worst case
    "topk": {"top_k": 32},
    "performer": {"num_features": 256, "seed": 0},
    "linformer": {"projected_length": 256},  # max_length is set to the largest L
    "nystrom": {"num_landmarks": 64},
}
#: The efficient long-sequence kinds: cost linear in L; the 20x speed-up and slope targets apply.
LINEAR_COST_KINDS = ("local", "linear", "performer", "linformer", "nystrom")
#: Dynamic kinds that compute a band of the exact scores: linear in L for a bounded span, so the
#: slope target applies; their speed-up is bounded by the band's share of the scores (reported).
BANDED_KINDS = ("adaptive_span",)
REFERENCE_KIND = "mha"
SIDE_BY_SIDE_CSV = "side_by_side.csv"


@dataclass(frozen=True)
class KindsBenchConfig:
    """What to measure."""

    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768)  # sequence lengths L
    dim: int = 512  # model width
    num_heads: int = 8  # attention heads
    batch: int = 1  # sequences per call
    dtype: torch.dtype = torch.float32  # parameter and input dtype
    device: str = "cpu"  # "cpu" or "cuda"
    kinds: tuple[str, ...] | None = None  # None: every registered kind
    repeats: int = 3  # at most this many timed runs per point (median)
    long_call_s: float = 10.0  # calls longer than this are timed once, without warm-up
    point_budget_s: float | None = 240.0  # skip a point projected to take longer (not mha)
    fit_points: int = 3  # the slope is fitted over this many largest measured lengths
    interleaved_rounds: int = 2  # extra timed calls per quick point, taken round-robin over L
    side_by_side_rounds: int = 3  # rounds timing mha and each efficient kind together at max L
    side_by_side_calls: int = 3  # a kind's calls per round (median); mha gets one per round
    seed: int = 0  # seed of inputs and weights
    target_length: int = 32768  # the 20x speed-up target is stated at this L only
    out_dir: Path = Path("bench_results/kinds")  # where CSV, PNG and summary go


@dataclass
class Measurement:
    """One (kind, L) point; times in seconds, memory in MiB; NaN when skipped."""

    kind: str
    length: int
    forward_s: float = math.nan
    forward_backward_s: float = math.nan
    forward_peak_mib: float = math.nan
    forward_backward_peak_mib: float = math.nan
    status: str = "ok"  # "ok" or why the point was skipped


@dataclass
class KindSummary:
    """Fitted slopes and crossover of one kind."""

    kind: str
    slopes: dict[str, float] = field(default_factory=dict)  # metric -> log-log slope
    crossover: dict[str, str] = field(default_factory=dict)  # metric -> length where < mha
    speedup: dict[str, float] = field(default_factory=dict)  # metric -> mha / kind at max L
    side_by_side: dict[str, float] = field(default_factory=dict)  # time metric -> median ratio
    rounds: int = 0  # side-by-side rounds behind ``side_by_side``

    def target_speedup(self, metric: str) -> float:
        """The side-by-side speed-up where rounds were run, else the sweep's."""
        return self.side_by_side.get(metric, self.speedup.get(metric, math.nan))


# -- measuring ---------------------------------------------------------------------------------
def _timed(fn: Callable[[], None], config: KindsBenchConfig, expected_s: float
           ) -> tuple[list[float], float]:
    """Timed samples and peak memory through the shared harness.

    A point expected to take less than ``long_call_s`` gets a warm-up call, a memory call and
    ``repeats`` timed calls; a longer one a single call, timed and measured at once (a long
    call warms itself up, and repeating it would multiply the cost of the largest points)."""
    quick = expected_s < config.long_call_s
    result = measure(fn, repeats=config.repeats if quick else 1, warmup=1 if quick else 0,
                     long_s=config.long_call_s, device=config.device)
    return result.samples, result.peak_mib


@dataclass
class _PointRun:
    """A measured point with its callables and samples, kept for the interleaved rounds."""

    point: Measurement
    calls: tuple[Callable[[], None], Callable[[], None]]  # forward, forward+backward
    samples: tuple[list[float], list[float]]

    def quick(self) -> bool:
        """Repeated calls (a single long call is not timed again)."""
        return all(len(s) > 1 for s in self.samples)

    def settle(self) -> None:
        self.point.forward_s = statistics.median(self.samples[0])
        self.point.forward_backward_s = statistics.median(self.samples[1])


def _interleave(runs: list[_PointRun], config: KindsBenchConfig) -> None:
    """Time every quick point once more per round, going through the lengths in turn.

    A point's first samples are taken back to back; on a machine whose speed drifts (a shared
    VM), a slow minute then lands on one length only and bends the fitted slope. Spreading
    each point's samples over the kind's whole run lets the median see the same conditions at
    every length."""
    quick = [run for run in runs if run.quick()]
    for _ in range(config.interleaved_rounds if len(quick) > 1 else 0):
        for run in quick:
            for call, samples in zip(run.calls, run.samples, strict=True):
                samples.append(time_call(call, config.device))
    for run in runs:
        run.settle()


def _build(kind: str, config: KindsBenchConfig) -> torch.nn.Module:
    options = dict(BENCH_OPTIONS.get(kind, {}))
    if kind == "linformer":
        options["max_length"] = max(config.lengths)
    torch.manual_seed(config.seed)
    layer = build_attention(kind, dim=config.dim, num_heads=config.num_heads, **options)
    return layer.to(device=config.device, dtype=config.dtype)


def measure_point(layer: torch.nn.Module, kind: str, length: int, config: KindsBenchConfig,
                  expected: Measurement | None = None,
                  growth: tuple[float, float] = (2.0, 2.0)) -> Measurement:
    """Forward and forward+backward time and peak memory of ``layer`` at length ``length``."""
    return _run_point(layer, kind, length, config, expected, growth).point


def _inputs(length: int, config: KindsBenchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The (B, L, dim) input and the output gradient used at length ``length``."""
    gen = torch.Generator(device=config.device).manual_seed(config.seed + length)
    x = torch.randn(config.batch, length, config.dim, generator=gen, device=config.device,
                    dtype=config.dtype)
    grad = torch.randn(x.shape, generator=gen, device=config.device, dtype=config.dtype)
    return x, grad


def _calls(layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Calls:
    """The timed calls: forward without autograd, and forward+backward into input and weights."""

    def forward() -> None:
        with torch.no_grad():
            layer(x)

    def forward_backward() -> None:
        layer.zero_grad(set_to_none=True)
        inp = x.detach().requires_grad_(True)
        layer(inp).backward(grad)

    return forward, forward_backward


def _run_point(layer: torch.nn.Module, kind: str, length: int, config: KindsBenchConfig,
               expected: Measurement | None = None,
               growth: tuple[float, float] = (2.0, 2.0)) -> _PointRun:
    """Forward and forward+backward time and peak memory of ``layer`` at length ``length``.

    ``expected`` (the previous point) and ``growth`` (its log-log slopes, forward and
    forward+backward) give the guess that decides between repeated and single calls."""
    forward, forward_backward = _calls(layer, *_inputs(length, config))
    result = Measurement(kind, length)
    fwd_guess = both_guess = 0.0
    if expected is not None:
        fwd_guess = expected.forward_s * (length / expected.length) ** growth[0]
        both_guess = expected.forward_backward_s * (length / expected.length) ** growth[1]
    forward_samples, result.forward_peak_mib = _timed(forward, config, fwd_guess)
    both_samples, result.forward_backward_peak_mib = _timed(forward_backward, config, both_guess)
    layer.zero_grad(set_to_none=True)
    run = _PointRun(result, (forward, forward_backward), (forward_samples, both_samples))
    run.settle()
    return run


def _measure_kind(kind: str, config: KindsBenchConfig,
                  log: Callable[[str], None]) -> Iterator[Measurement]:
    layer = _build(kind, config)
    layer.train()  # training mode, as in the forward+backward use; no kind uses dropout here
    measure_point(layer, kind, min(config.lengths), config)  # warm-up (allocator, kernels)
    previous: Measurement | None = None
    growth = (2.0, 2.0)  # assume quadratic until two points show the kind's own growth
    points: list[Measurement] = []  # every length in order, skipped ones included
    runs: list[_PointRun] = []  # the measured ones
    for length in sorted(config.lengths):
        if previous is not None and kind != REFERENCE_KIND and config.point_budget_s:
            projected = previous.forward_backward_s * (length / previous.length) ** 2
            if math.isfinite(projected) and projected > config.point_budget_s:
                point = Measurement(kind, length, status=f"skipped: projected {projected:.0f}s "
                                    f"> budget {config.point_budget_s:.0f}s")
                log(f"{kind:>14} L={length:>6}  {point.status}")
                points.append(point)
                continue
        run = _run_point(layer, kind, length, config, previous, growth)
        runs.append(run)
        point = run.point
        points.append(point)
        if previous is not None:
            growth = (
                max(1.0, loglog_slope([previous.length, length],
                                      [previous.forward_s, point.forward_s])),
                max(1.0, loglog_slope([previous.length, length],
                                      [previous.forward_backward_s, point.forward_backward_s])))
        previous = point
    _interleave(runs, config)
    for point in points:
        if point.status == "ok":
            log(f"{kind:>14} L={point.length:>6}  fwd {point.forward_s:8.3f}s  fwd+bwd "
                f"{point.forward_backward_s:8.3f}s  peak fwd {point.forward_peak_mib:8.1f} MiB  "
                f"fwd+bwd {point.forward_backward_peak_mib:8.1f} MiB")
        yield point


# -- analysis ----------------------------------------------------------------------------------
METRICS = ("forward_s", "forward_backward_s", "forward_peak_mib", "forward_backward_peak_mib")


def loglog_slope(lengths: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(L) over finite positive points."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(lengths, values)
           if math.isfinite(v) and v > 0]
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else math.nan


def crossover_length(lengths: Sequence[int], kind_values: Sequence[float],
                     reference_values: Sequence[float]) -> str:
    """Length where ``kind`` becomes cheaper than the reference, log-interpolated between points."""
    pts = [(n, k / r) for n, k, r in zip(lengths, kind_values, reference_values)
           if math.isfinite(k) and math.isfinite(r) and r > 0 and k > 0]
    if not pts:
        return "n/a"
    if pts[0][1] < 1:
        return f"<= {pts[0][0]}"
    for (n0, r0), (n1, r1) in itertools.pairwise(pts):
        if r0 >= 1 > r1:
            t = math.log(r0) / (math.log(r0) - math.log(r1))
            return f"~{round(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))}"
    return f"> {pts[-1][0]}"


def summarize(points: Sequence[Measurement], config: KindsBenchConfig,
              timings: Sequence[RoundTiming] = ()) -> list[KindSummary]:
    """Slopes, crossovers and speed-ups per kind; ``timings`` are side-by-side rounds, if any."""
    side_by_side = median_speedups(timings)
    rounds: dict[str, set[int]] = {}
    for t in timings:
        rounds.setdefault(t.kind, set()).add(t.round)
    by_kind: dict[str, dict[int, Measurement]] = {}
    for p in points:
        by_kind.setdefault(p.kind, {})[p.length] = p
    ref = by_kind.get(REFERENCE_KIND, {})
    summaries = []
    for kind, rows in by_kind.items():
        lengths = sorted(rows)
        summary = KindSummary(kind)
        for metric in METRICS:
            measured = [n for n in lengths if math.isfinite(getattr(rows[n], metric))]
            fit = measured[-config.fit_points:]
            summary.slopes[metric] = loglog_slope(fit, [getattr(rows[n], metric) for n in fit])
            if ref and kind != REFERENCE_KIND:
                common = [n for n in lengths if n in ref]
                summary.crossover[metric] = crossover_length(
                    common, [getattr(rows[n], metric) for n in common],
                    [getattr(ref[n], metric) for n in common])
                top = max(common) if common else None
                if top is not None:
                    mine, theirs = getattr(rows[top], metric), getattr(ref[top], metric)
                    summary.speedup[metric] = theirs / mine if mine > 0 else math.nan
        summary.side_by_side = side_by_side.get(kind, {})
        summary.rounds = len(rounds.get(kind, ()))
        summaries.append(summary)
    return summaries


def format_summary(summaries: Sequence[KindSummary], config: KindsBenchConfig) -> str:
    top = max(config.lengths)
    rounds = max((s.rounds for s in summaries), default=0)
    lines = [f"slopes fitted over the {config.fit_points} largest measured lengths; speed-up = "
             f"mha / kind at L={top}; crossover = length where the kind becomes cheaper than mha",
             f"sweep: the length sweep's medians (mha and each kind run at different times); "
             f"side by side: median over {rounds} rounds of mha and the kind timed together "
             f"(the targets use it where present)" if rounds else
             "sweep: the length sweep's medians (no side-by-side rounds were run)",
             f"{'kind':>14} | {'slope t_fwd':>11} {'t_fwd+bwd':>9} {'mem_fwd':>8} "
             f"{'mem_f+b':>8} | {'sweep x fwd':>11} {'x f+b':>6} | {'side x fwd':>10} "
             f"{'x f+b':>6} | crossover fwd / fwd+bwd"]
    for s in summaries:
        sl = [s.slopes.get(m, math.nan) for m in METRICS]
        sp = [s.speedup.get(m, math.nan) for m in MODES]
        sbs = [s.side_by_side.get(m, math.nan) for m in MODES]
        cross = " / ".join(s.crossover.get(m, "-") for m in MODES)
        lines.append(f"{s.kind:>14} | {sl[0]:11.2f} {sl[1]:9.2f} {sl[2]:8.2f} {sl[3]:8.2f} | "
                     f"{sp[0]:11.1f} {sp[1]:6.1f} | {sbs[0]:10.1f} {sbs[1]:6.1f} | {cross}")
    targets, banded = [], []
    for s in summaries:
        flat = all(s.slopes.get(m, math.inf) <= 1.15 for m in METRICS)
        if s.kind in LINEAR_COST_KINDS:
            fast = all(s.target_speedup(m) >= 20 for m in MODES)
            verdict = ("yes" if fast else "NO") if top == config.target_length else \
                f"n/a at this size (target at L={config.target_length})"
            targets.append(f"{s.kind}: >=20x {verdict}, slopes<=1.15 "
                           f"{'yes' if flat else 'NO'}")
        elif s.kind in BANDED_KINDS:
            band = band_width(s.kind, top)
            bound = f", score-count bound {top / band:.1f}x (band of {band} keys)" if band else ""
            banded.append(f"{s.kind}: slopes<=1.15 {'yes' if flat else 'NO'}{bound}")
    if targets:
        lines.append(f"targets at L={top} (linear-cost kinds): {'; '.join(targets)}")
    if banded:
        lines.append(f"banded dynamic kinds at L={top}: {'; '.join(banded)}")
    return "\n".join(lines)


SUMMARY_COLUMNS = ("kind", "slope_forward_s", "slope_forward_backward_s", "speedup_forward_s",
                   "speedup_forward_backward_s", "side_by_side_forward_s",
                   "side_by_side_forward_backward_s", "crossover_forward_s",
                   "crossover_forward_backward_s")


def summary_rows(summaries: Sequence[KindSummary]) -> list[dict[str, Any]]:
    """One row per kind for the Markdown table (``kinds.md``)."""
    return [{"kind": s.kind,
             **{f"slope_{m}": s.slopes.get(m, math.nan) for m in MODES},
             **{f"speedup_{m}": s.speedup.get(m, math.nan) for m in MODES},
             **{f"side_by_side_{m}": s.side_by_side.get(m, math.nan) for m in MODES},
             **{f"crossover_{m}": s.crossover.get(m, "-") for m in MODES}}
            for s in summaries]


def band_width(kind: str, length: int) -> int | None:
    """Keys per query the benchmark's options make a banded kind compute, or None."""
    options = BENCH_OPTIONS.get(kind, {})
    if kind == "adaptive_span":  # fully grown span: |i - j| <= max_span - 1 on both sides
        window = int(options.get("max_span", 1024)) - 1
        return min(length, 2 * window + 1)
    return None


# -- output ------------------------------------------------------------------------------------
def write_points_csv(points: Sequence[Measurement], path: Path) -> None:
    write_csv(path, [{"kind": p.kind, "length": p.length,
                      **{m: round(getattr(p, m), 6) for m in METRICS}, "status": p.status}
                     for p in points])


def write_plot(points: Sequence[Measurement], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("forward_s", "forward time (s)"),
              ("forward_backward_s", "forward+backward time (s)"),
              ("forward_backward_peak_mib", "peak memory, forward+backward (MiB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5))
    kinds = list(dict.fromkeys(p.kind for p in points))
    colours = distinct_colours(len(kinds))
    for ax, (metric, label) in zip(axes, panels):
        for index, kind in enumerate(kinds):
            rows = sorted((p.length, getattr(p, metric)) for p in points if p.kind == kind)
            rows = [(n, v) for n, v in rows if math.isfinite(v) and v > 0]
            if rows:
                style = "-" if kind in LINEAR_COST_KINDS else "--"
                ax.plot([r[0] for r in rows], [r[1] for r in rows], style, marker="o", ms=3,
                        label=kind, color=colours[index])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[i], marker="o", ms=3, label=k)
               for i, k in enumerate(kinds)]
    handles += [Line2D([], [], color="black", linestyle="-",
                       label="solid: linear-cost kinds (20x target)"),
                Line2D([], [], color="black", linestyle="--", label="dashed: other kinds")]
    axes[0].legend(handles=handles, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_points_csv(path: Path) -> list[Measurement]:
    """Points written by an earlier (possibly interrupted) run."""
    import csv

    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    points = []
    for row in rows:
        point = Measurement(row["kind"], int(row["length"]), status=row["status"])
        for metric in METRICS:
            setattr(point, metric, float(row[metric]) if row[metric] else math.nan)
        points.append(point)
    return points


def report(points: Sequence[Measurement], config: KindsBenchConfig, header: str,
           log: Callable[[str], None] = print, timings: Sequence[RoundTiming] = ()
           ) -> list[KindSummary]:
    """Slopes, crossovers and targets; writes summary.txt and kinds.png under ``out_dir``."""
    summaries = summarize(points, config, timings)
    text = format_summary(summaries, config)
    log(text)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / "summary.txt").write_text(header + "\n" + text + "\n")
    write_plot(points, config.out_dir / "kinds.png", header)
    (config.out_dir / "kinds.md").write_text(markdown_table(summary_rows(summaries),
                                                            SUMMARY_COLUMNS))
    log(f"wrote {config.out_dir / 'summary.txt'}, {config.out_dir / 'kinds.md'}, "
        f"{config.out_dir / 'kinds.png'}")
    return summaries


def run_kinds_benchmark(config: KindsBenchConfig, *, log: Callable[[str], None] = print
                        ) -> tuple[list[Measurement], list[KindSummary]]:
    """Measure every kind at every length; write CSV, PNG and summary under ``out_dir``."""
    available = list_attention_kinds()
    kinds = list(config.kinds) if config.kinds else list(available)
    unknown = [k for k in kinds if k not in available]
    if unknown:
        raise ValueError(f"unknown attention kinds {unknown}; registered: {sorted(available)}")
    if any(n < 1 for n in config.lengths):
        raise ValueError(f"lengths must be positive, got {list(config.lengths)}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch.cuda.is_available() is False")
    if REFERENCE_KIND in kinds:  # measure the reference first so crossovers can be logged early
        kinds.remove(REFERENCE_KIND)
        kinds.insert(0, REFERENCE_KIND)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    header = (f"attnkit bench kinds: dim={config.dim} heads={config.num_heads} "
              f"batch={config.batch} {str(config.dtype).removeprefix('torch.')} "
              f"{config.device} threads={torch.get_num_threads()} torch={torch.__version__} "
              f"lengths={list(config.lengths)} "
              f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}")
    log(header)
    points: list[Measurement] = []
    for kind in kinds:
        for point in _measure_kind(kind, config, log):
            points.append(point)
            write_points_csv(points, config.out_dir / "kinds.csv")  # partial results survive a stop
    log(f"wrote {config.out_dir / 'kinds.csv'}")
    timings = _side_by_side(points, config, log)
    return points, report(points, config, header, log, timings)


def _side_by_side(points: Sequence[Measurement], config: KindsBenchConfig,
                  log: Callable[[str], None]) -> list[RoundTiming]:
    """Rounds at the largest length over the kinds with a target or a bound (efficient and
    banded kinds); writes side_by_side.csv."""
    top = max(config.lengths)
    measured = {p.kind for p in points if p.length == top and p.status == "ok"}
    compared = [k for k in (*LINEAR_COST_KINDS, *BANDED_KINDS) if k in measured]
    if config.side_by_side_rounds < 1 or REFERENCE_KIND not in measured or not compared:
        return []
    log(f"side by side at L={top}: {REFERENCE_KIND} and {', '.join(compared)}, "
        f"{config.side_by_side_rounds} rounds")
    x, grad = _inputs(top, config)
    layers = {kind: _build(kind, config).train() for kind in (REFERENCE_KIND, *compared)}
    calls = {kind: _calls(layer, x, grad) for kind, layer in layers.items()}
    reference = calls.pop(REFERENCE_KIND)
    timings = run_rounds(reference, calls, rounds=config.side_by_side_rounds,
                         calls=config.side_by_side_calls, device=config.device, log=log)
    write_timings_csv(timings, config.out_dir / SIDE_BY_SIDE_CSV)
    log(f"wrote {config.out_dir / SIDE_BY_SIDE_CSV}")
    return timings


# -- command line ------------------------------------------------------------------------------
SMALL_LENGTHS = (256, 512, 1024, 2048)


def _parse_lengths(text: str) -> tuple[int, ...]:
    """'1k,2k,4096' -> (1024, 2048, 4096)."""
    values = []
    for token in text.lower().split(","):
        token = token.strip()
        try:
            values.append(int(token[:-1]) * 1024 if token.endswith("k") else int(token))
        except ValueError:
            raise argparse.ArgumentTypeError(f"lengths must be comma-separated integers such "
                                             f"as '1024,2048' or '1k,2k', got {text!r}") from None
    return tuple(values)


def register(bench_subparsers: Any) -> None:
    """Add ``kinds`` to the ``attnkit bench`` subcommands."""
    p = bench_subparsers.add_parser(
        "kinds", help="time and memory of every attention kind against sequence length")
    p.add_argument("--lengths", type=_parse_lengths, default=None,
                   help="comma-separated lengths, e.g. 1k,2k,4k (default 1k..32k)")
    p.add_argument("--small", action="store_true",
                   help=f"quick run: lengths {','.join(map(str, SMALL_LENGTHS))}, dim 128")
    p.add_argument("--kinds", default=None, help="comma-separated kinds (default: all)")
    p.add_argument("--dim", type=int, default=None, help="model width (default 512)")
    p.add_argument("--heads", type=int, default=8, help="attention heads (default 8)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per quick point (median)")
    p.add_argument("--interleaved-rounds", type=int, default=2,
                   help="extra timed calls per quick point, taken in turn over the lengths "
                        "(default 2)")
    p.add_argument("--side-by-side-rounds", type=int, default=3,
                   help="rounds at the largest length timing mha and each efficient kind "
                        "together; the targets use their median ratio (default 3, 0: none)")
    p.add_argument("--side-by-side-calls", type=int, default=3,
                   help="a kind's timed calls per side-by-side round, median (default 3)")
    p.add_argument("--point-budget", type=float, default=240.0,
                   help="skip points projected to take longer, in seconds (0: never skip)")
    p.add_argument("--out", type=Path, default=Path("bench_results/kinds"))
    p.add_argument("--from-csv", type=Path, default=None,
                   help="no measuring: summarize and plot the kinds.csv of an earlier run")
    p.set_defaults(handler=_run_from_args)


def _run_from_args(args: argparse.Namespace) -> int:
    lengths = args.lengths or (SMALL_LENGTHS if args.small else KindsBenchConfig.lengths)
    dim = args.dim or (128 if args.small else 512)
    config = KindsBenchConfig(
        lengths=tuple(lengths), dim=dim, num_heads=args.heads, batch=args.batch,
        device=args.device, kinds=tuple(args.kinds.split(",")) if args.kinds else None,
        repeats=args.repeats, interleaved_rounds=args.interleaved_rounds,
        side_by_side_rounds=args.side_by_side_rounds, side_by_side_calls=args.side_by_side_calls,
        point_budget_s=args.point_budget or None, out_dir=args.out)
    if args.from_csv is not None:
        points = read_points_csv(args.from_csv)
        rounds_csv = args.from_csv.parent / SIDE_BY_SIDE_CSV
        timings = read_timings_csv(rounds_csv) if rounds_csv.exists() else []
        config = KindsBenchConfig(lengths=tuple(sorted({p.length for p in points})),
                                  out_dir=args.out)
        report(points, config, f"attnkit bench kinds (from {args.from_csv})", timings=timings)
        return 0
    run_kinds_benchmark(config, log=lambda line: print(line, flush=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attnkit.bench.kinds`` (same options as ``attnkit bench kinds``)."""
    parser = argparse.ArgumentParser(prog="attnkit bench")
    register(parser.add_subparsers(dest="bench_command", required=True))
    args = parser.parse_args(["kinds", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
