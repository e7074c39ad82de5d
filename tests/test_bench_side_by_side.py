"""Side-by-side speed-up rounds: call order, per-round ratios, their median, CSV round trip."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from attnkit.bench import side_by_side
from attnkit.bench.kinds import KindsBenchConfig, Measurement, format_summary, summarize
from attnkit.bench.side_by_side import (
    MODES,
    RoundTiming,
    median_speedups,
    read_timings_csv,
    run_rounds,
    write_timings_csv,
)


def _recorder(order: list[str]) -> Callable[[str], Callable[[], None]]:
    def call(name: str) -> Callable[[], None]:
        return lambda: order.append(name)
    return call


def test_each_round_times_the_reference_then_every_kind_per_mode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    call = _recorder(order)
    # time_call returns the next scripted duration and runs the call, so order is recorded too.
    durations: Iterator[float] = iter([
        40.0, 2.0, 9.0, 1.0, 4.0, 4.0, 4.0,  # round 0 forward: mha, a x3, b x3
        100.0, 5.0, 5.0, 5.0, 10.0, 10.0, 10.0,  # round 0 forward+backward
        20.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0,  # round 1 forward: the machine got twice as fast
        50.0, 2.5, 2.5, 2.5, 5.0, 5.0, 5.0])

    def fake_time_call(fn: Callable[[], None], device: str = "cpu") -> float:
        fn()
        return next(durations)

    monkeypatch.setattr(side_by_side, "time_call", fake_time_call)
    kinds = {"a": (call("a_f"), call("a_b")), "b": (call("b_f"), call("b_b"))}
    logged: list[str] = []
    timings = run_rounds((call("ref_f"), call("ref_b")), kinds, rounds=2, calls=3,
                         log=logged.append)
    warmup = ["a_f", "a_b", "b_f", "b_b"]
    one_round = ["ref_f", *["a_f"] * 3, *["b_f"] * 3, "ref_b", *["a_b"] * 3, *["b_b"] * 3]
    assert order == warmup + one_round * 2
    first = {(t.kind, t.mode): t for t in timings if t.round == 0}
    assert first["a", MODES[0]].kind_s == 2.0  # median of 2, 9, 1
    assert first["a", MODES[0]].speedup == pytest.approx(20.0)
    assert first["b", MODES[1]].speedup == pytest.approx(10.0)
    # drift cancels: both rounds give a 20x forward for a although mha's time halved
    speedups = median_speedups(timings)
    assert speedups["a"][MODES[0]] == pytest.approx(20.0)
    assert speedups["b"][MODES[0]] == pytest.approx(10.0)
    assert len(logged) == 2 and "a fwd 20.0x" in logged[0]


def test_bad_round_settings_are_named() -> None:
    with pytest.raises(ValueError, match="calls=0"):
        run_rounds((lambda: None, lambda: None), {}, rounds=1, calls=0)


def test_timings_survive_the_csv(tmp_path: Path) -> None:
    timings = [RoundTiming("linear", 0, MODES[0], 40.0, 1.25),
               RoundTiming("linear", 0, MODES[1], 140.0, 4.5)]
    write_timings_csv(timings, tmp_path / "side_by_side.csv")
    again = read_timings_csv(tmp_path / "side_by_side.csv")
    assert again == timings
    assert math.isnan(RoundTiming("x", 0, MODES[0], 1.0, 0.0).speedup)


def _points(kind: str, factor: float) -> list[Measurement]:
    return [Measurement(kind, n, *(factor * (n / 1024) ** (2 if kind == "mha" else 1),) * 4)
            for n in (1024, 2048, 4096)]


def test_targets_use_the_side_by_side_ratio_where_present() -> None:
    """The sweep says local 16 / 0.5 = 32x and linear 8x; side by side says the opposite."""
    config = KindsBenchConfig(lengths=(1024, 2048, 4096), target_length=4096)
    points = _points("mha", 1.0) + _points("local", 0.125) + _points("linear", 0.5)
    timings = [RoundTiming(kind, r, mode, 40.0, 40.0 / ratio)
               for kind, ratio in (("local", 15.0), ("linear", 25.0))
               for r in range(3) for mode in MODES]
    summaries = {s.kind: s for s in summarize(points, config, timings)}
    assert summaries["local"].speedup["forward_s"] == pytest.approx(32.0)  # sweep kept
    assert summaries["local"].side_by_side["forward_s"] == pytest.approx(15.0)
    assert summaries["linear"].rounds == 3
    text = format_summary(list(summaries.values()), config)
    assert "local: >=20x NO" in text and "linear: >=20x yes" in text
    assert "median over 3 rounds" in text
    # without rounds the sweep decides
    text = format_summary(summarize(points, config), config)
    assert "local: >=20x yes" in text and "linear: >=20x NO" in text
    assert "no side-by-side rounds" in text
