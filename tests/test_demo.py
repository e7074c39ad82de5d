"""``attnkit demo`` end to end, as a user runs it: a fresh process, its printed report, its files.

The demo trains the small ViT on digits for 50 epochs (about 45 s of training on an idle 2-core
machine, more when the machine is shared), so it is marked slow; ``make test`` still runs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


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
    assert accuracy >= 0.95, f"the demo reached only {accuracy:.2%} (docs: about 97.8%)"
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
