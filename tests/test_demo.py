"""``attnkit demo``: from Python, ``run_demo`` trains and writes the attention report itself
(no CLI registration involved); end to end, as a user runs it, in a fresh process.

The end-to-end test trains the demo ViT on digits for its full 40 epochs (minutes on a 2-core
machine), so it is marked slow; ``make test`` still runs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def test_run_demo_from_python_writes_the_report(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from attnkit.demo import run_demo

    result = run_demo(overrides=["train.epochs=1"], out_dir=str(tmp_path), progress=False)
    report = Path(result.run_dir) / "explain.html"
    assert report.is_file() and report.stat().st_size > 1000
    assert f"attention report: {report}" in capsys.readouterr().out
    skipped = run_demo(overrides=["train.epochs=1"], out_dir=str(tmp_path / "no-report"),
                       progress=False, report=False)
    assert not (Path(skipped.run_dir) / "explain.html").exists()


@pytest.mark.slow
def test_demo_trains_reports_and_writes_its_run(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "attnkit.cli", "demo", "--out-dir",
                           str(tmp_path), "--no-progress"], env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.search(r"digits test accuracy: ([0-9.]+)% after [0-9.]+ s of training "
                        r"\((\d+) steps\)", done.stdout)
    assert printed, done.stdout[-2000:]
    accuracy, steps = float(printed.group(1)) / 100, int(printed.group(2))
    assert accuracy >= 0.95, f"the demo reached only {accuracy:.2%} (docs: 98.33%)"
    run_line = re.search(r"run directory: (.+)", done.stdout)
    assert run_line
    run = Path(run_line.group(1).strip())
    assert run.parent == tmp_path and run.is_dir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy, abs=5e-5)
    assert metrics["steps"] == steps > 0
    assert (run / "best" / "model.safetensors").stat().st_size > 10_000
    assert (run / "config.yaml").is_file()
    report_line = re.search(r"attention report: (.+)", done.stdout)
    assert report_line, "the explain hook did not run"
    report = Path(report_line.group(1).strip())
    assert report.is_file() and report.read_text().lstrip().lower().startswith("<!doctype html")
