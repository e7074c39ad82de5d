"""``attnkit bench kinds``: slopes, crossovers, the target lines, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from attnkit.bench.kinds import (
    BANDED_KINDS,
    LINEAR_COST_KINDS,
    KindsBenchConfig,
    Measurement,
    _interleave,
    _PointRun,
    band_width,
    crossover_length,
    format_summary,
    loglog_slope,
    run_kinds_benchmark,
    summarize,
)
from attnkit.layers import list_attention_kinds


def test_loglog_slope_recovers_the_power() -> None:
    lengths = [1024, 2048, 4096]
    assert loglog_slope(lengths, [3.0 * n ** 1.5 for n in lengths]) == pytest.approx(1.5)
    assert loglog_slope(lengths, [7.0, 7.0, 7.0]) == pytest.approx(0.0)
    assert math.isnan(loglog_slope([1024], [1.0]))  # one point has no slope


def test_crossover_is_log_interpolated() -> None:
    # kind / mha: 4 at 1k, 1/4 at 4k -> 1 halfway in log L, at 2k.
    assert crossover_length([1024, 4096], [4.0, 1.0], [1.0, 4.0]) == "~2048"
    assert crossover_length([1024, 4096], [0.5, 0.5], [1.0, 1.0]) == "<= 1024"
    assert crossover_length([1024, 4096], [2.0, 2.0], [1.0, 1.0]) == "> 4096"


def _points(kind: str, factor: float, power: float) -> list[Measurement]:
    """Synthetic points: time and memory = factor * (L / 1k) ** power."""
    return [Measurement(kind, n, *(factor * (n / 1024) ** power,) * 4) for n in (1024, 2048, 4096)]


def test_summary_names_which_kinds_meet_the_targets() -> None:
    config = KindsBenchConfig(lengths=(1024, 2048, 4096), target_length=4096)
    points = (_points("mha", 1.0, 2.0) + _points("linear", 0.01, 1.0)  # 16 / 0.04 = 400x
              + _points("performer", 0.5, 1.3)  # too steep and too slow
              + _points("adaptive_span", 0.1, 1.0))
    summaries = {s.kind: s for s in summarize(points, config)}
    assert summaries["linear"].speedup["forward_s"] == pytest.approx(400.0)
    text = format_summary(list(summaries.values()), config)
    assert "linear: >=20x yes, slopes<=1.15 yes" in text
    assert "performer: >=20x NO, slopes<=1.15 NO" in text
    # adaptive_span is a dynamic kind: only the slope target, with its score-count bound.
    assert "adaptive_span: slopes<=1.15 yes, score-count bound 2.0x (band of 2047 keys)" in text
    assert "adaptive_span: >=20x" not in text


def test_kind_groups_follow_the_issue_and_exist() -> None:
    assert set(LINEAR_COST_KINDS) == {"local", "linear", "performer", "linformer", "nystrom"}
    assert set(LINEAR_COST_KINDS) | set(BANDED_KINDS) <= set(list_attention_kinds())
    assert band_width("adaptive_span", 32768) == 2047  # max_span 1024, both sides
    assert band_width("adaptive_span", 1000) == 1000  # never more than the sequence
    assert band_width("linear", 32768) is None


def test_tiny_run_writes_csv_plot_and_summary(tmp_path: Path) -> None:
    config = KindsBenchConfig(lengths=(32, 64), dim=16, num_heads=2, kinds=("linear", "mha"),
                              repeats=1, out_dir=tmp_path)
    lines: list[str] = []
    points, summaries = run_kinds_benchmark(config, log=lines.append)
    assert "THP_MEM_ALLOC_ENABLE=" in lines[0]  # allocator setting recorded with the run
    assert [p.kind for p in points] == ["mha", "mha", "linear", "linear"]  # reference first
    assert all(p.forward_s > 0 and p.forward_backward_s > 0 for p in points)
    rows = list(csv.DictReader((tmp_path / "kinds.csv").open()))
    assert len(rows) == 4 and {r["kind"] for r in rows} == {"mha", "linear"}
    assert (tmp_path / "kinds.png").stat().st_size > 0
    assert (tmp_path / "kinds.md").read_text().startswith("| kind | slope_forward_s |")
    assert "targets at L=64" in (tmp_path / "summary.txt").read_text()
    assert {s.kind for s in summaries} == {"mha", "linear"}
    # the side-by-side rounds at the largest length: linear next to mha, both modes, 3 rounds
    rounds = list(csv.DictReader((tmp_path / "side_by_side.csv").open()))
    assert len(rounds) == 6 and {r["kind"] for r in rounds} == {"linear"}
    assert all(float(r["speedup"]) > 0 for r in rounds)
    assert {s.kind: s.rounds for s in summaries} == {"mha": 0, "linear": 3}
    assert "median over 3 rounds" in (tmp_path / "summary.txt").read_text()


def test_unknown_kind_is_named() -> None:
    with pytest.raises(ValueError, match="unknown attention kinds \\['nope'\\]"):
        run_kinds_benchmark(KindsBenchConfig(lengths=(32,), kinds=("nope",)), log=lambda s: None)


def test_interleaved_rounds_time_quick_points_in_turn_over_lengths() -> None:
    """Extra samples go round-robin over the lengths (so drift hits every length alike), join
    each quick point's median, and never repeat a single long call."""
    order: list[str] = []

    def call(name: str) -> Callable[[], None]:
        return lambda: order.append(name)

    def run(length: int, samples: list[float]) -> _PointRun:
        return _PointRun(Measurement("linear", length), (call(f"f{length}"), call(f"b{length}")),
                         (list(samples), list(samples)))

    runs = [run(1, [5.0, 5.0]), run(2, [9.0, 9.0]), run(4, [30.0])]  # the last is a long call
    _interleave(runs, KindsBenchConfig(interleaved_rounds=2))
    assert order == ["f1", "b1", "f2", "b2"] * 2
    assert all(len(s) == 4 for r in runs[:2] for s in r.samples) and runs[2].samples[0] == [30.0]
    # the new samples are ~0 s, so half of each quick point's samples now sit at ~0
    assert runs[0].point.forward_s < 5.0 and runs[2].point.forward_s == 30.0


def test_speedup_target_is_not_judged_below_its_length() -> None:
    """The 20x target is stated at L = 32k: a 2k run says n/a, not NO."""
    config = KindsBenchConfig(lengths=(1024, 2048))
    points = [p for p in _points("mha", 1.0, 2.0) + _points("performer", 0.5, 1.3)
              if p.length <= 2048]
    text = format_summary(summarize(points, config), config)
    assert "performer: >=20x n/a at this size (target at L=32768)" in text
    assert ">=20x NO" not in text
