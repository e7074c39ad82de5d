"""The benchmark harness and a tiny run of ``attnkit bench attention``."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import pytest
import torch

from attnkit.bench.harness import (
    PeakMemory,
    distinct_colours,
    format_table,
    markdown_table,
    matmul_gflops,
    measure,
    write_csv,
    write_outputs,
)
from attnkit.cli import main


def test_measure_takes_the_median_of_timed_calls() -> None:
    calls: list[int] = []
    m = measure(lambda: calls.append(1), repeats=3, warmup=1)
    # warm-up, the untimed memory call, three timed calls
    assert len(calls) == 5 and m.repeats == 3 and len(m.samples) == 3
    assert m.seconds == sorted(m.samples)[1]


def test_a_long_warm_up_gets_a_single_call_timed_and_measured() -> None:
    calls: list[int] = []
    m = measure(lambda: calls.append(1) or time.sleep(0.02), repeats=3, warmup=1, long_s=0.01)
    assert len(calls) == 2 and m.repeats == 1 and m.samples[0] >= 0.02


@pytest.mark.skipif(not PeakMemory.cpu_supported(), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_sees_torch_allocations() -> None:
    def allocate() -> torch.Tensor:
        big = torch.ones(16 * 1024 * 1024)  # 64 MiB, touched
        return big.sum()

    m = measure(allocate, repeats=1)
    assert 48 <= m.peak_mib <= 160, m.peak_mib
    small = measure(lambda: torch.ones(1024).sum(), repeats=1)
    assert small.peak_mib < 32


def test_matmul_rate_is_positive() -> None:
    assert matmul_gflops(128, repeats=1) > 0


def test_table_and_csv(tmp_path: Path) -> None:
    rows = [{"name": "a", "ms": 1.23456, "note": ""}, {"name": "bb", "ms": math.nan, "x": 2}]
    text = format_table(rows, ["name", "ms"])
    assert "1.23" in text and "-" in text.splitlines()[-1]
    write_csv(tmp_path / "sub" / "r.csv", rows)
    read = list(csv.DictReader((tmp_path / "sub" / "r.csv").open()))
    assert [r["name"] for r in read] == ["a", "bb"] and read[1]["x"] == "2"


def test_bench_attention_cli_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "attention", "--small", "--no-flex", "--lengths", "96",
                 "--patterns", "causal", "sliding_window", "--window", "16", "--heads", "2",
                 "--head-dim", "8", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "float32 matmul" in printed and "targets" in printed
    rows = list(csv.DictReader((tmp_path / "attention.csv").open()))
    by_key = {(r["pattern"], r["path"], r["mode"]): r for r in rows}
    blocked = by_key[("sliding_window", "attnkit blocked", "fwd+bwd")]
    assert float(blocked["ms"]) > 0 and float(blocked["useful_GFLOPs"]) > 0
    assert by_key[("sliding_window", "torch sdpa (flags)", "fwd")]["note"].startswith("skipped")
    assert by_key[("causal", "torch flex (compiled)", "fwd")]["note"].startswith("skipped")
    assert float(by_key[("causal", "attnkit auto", "fwd")]["ms"]) > 0
    # CSV + Markdown table + plot, like every suite; 16k targets are not judged at L=96.
    table = (tmp_path / "attention.md").read_text()
    assert table.startswith("| pattern | L | path |") and "attnkit blocked" in table
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"
    assert "n/a at this size (target at L=16384)" in printed
    assert "(target >= 8): NOT MET" not in printed  # the auto >= 0.95x SDPA target holds at every L


def test_markdown_table_and_outputs(tmp_path: Path) -> None:
    rows = [{"name": "a|b", "ms": 1.23456}, {"name": "c", "ms": math.nan}]
    assert markdown_table(rows, ["name", "ms"]).splitlines() == [
        "| name | ms |", "|---|---|", "| a\\|b | 1.23 |", "| c | - |"]
    drawn: list[Path] = []
    paths = write_outputs(tmp_path / "out", "suite", rows, ["name", "ms"], plot=drawn.append)
    assert [p.name for p in paths] == ["suite.csv", "suite.md", "suite.png"]
    assert drawn == [tmp_path / "out" / "suite.png"]
    assert len(set(distinct_colours(20))) == 20


def test_bench_rejects_bad_arguments() -> None:
    assert main(["bench", "attention", "--repeats", "0", "--no-flex", "--lengths", "8"]) == 2


def test_bench_tiles_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["bench", "tiles", "--length", "64", "--sizes", "16", "32", "--repeats", "1",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "b=16 ms" in printed and "default ms" in printed and "sliding_window" in printed
    with open(tmp_path / "tiles.csv") as f:  # written like the other suites' CSV files
        rows = list(csv.DictReader(f))
    assert [r["pattern"] for r in rows] == ["causal", "sliding_window", "document"]
    assert float(rows[0]["b=16 ms"]) > 0 and f"wrote {tmp_path / 'tiles.csv'}" in printed
    assert "| pattern | L | mode | b=16 ms |" in (tmp_path / "tiles.md").read_text()
    assert (tmp_path / "tiles.csv").is_file()
    assert (tmp_path / "tiles.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["bench", "tiles", "--sizes", "0"]) == 2


def test_tile_sweep_forward_backward_reports_useful_work() -> None:
    from attnkit.bench.attention import tile_sweep

    rows = tile_sweep(64, [16], patterns=["sliding_window"], repeats=1, mode="fwd+bwd",
                      log=lambda text: None)
    (row,) = rows
    assert row["mode"] == "fwd+bwd" and row["b=16 ms"] > 0 and row["default ms"] > 0
    assert 0 < row["b=16 %"] < 1000 and 0 < row["default %"] < 1000
    with pytest.raises(ValueError, match="mode must be"):
        tile_sweep(64, [16], mode="bwd")
