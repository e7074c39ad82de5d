"""attnkit bench hf-capture: runs small, checks its weights, validates its options."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="pip install 'attnkit[hf]'")

from attnkit.bench.hf_capture import (
    PATHS,
    HFCaptureBenchConfig,
    compare_capture_overhead,
    format_report,
)


def test_small_run_times_every_path_and_checks_the_weights() -> None:
    cfg = HFCaptureBenchConfig(length=32, layers=2, hidden=32, heads=4, capture_layer=1,
                               rounds=2)
    report = compare_capture_overhead(cfg, log=lambda line: None)
    assert [row["path"] for row in report["rows"]] == list(PATHS)
    assert all(row["median_s"] > 0 and row["ratio_to_attnkit"] > 0 for row in report["rows"])
    assert report["rows"][0]["ratio_to_attnkit"] == 1.0
    assert report["max_abs_weight_diff_vs_eager"] < 1e-6
    assert "capture of layer 1" in format_report(report)


@pytest.mark.parametrize("bad", [dict(capture_layer=12), dict(rounds=0), dict(paths=("x",))])
def test_bad_options_are_named(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        HFCaptureBenchConfig(**bad)  # type: ignore[arg-type]
