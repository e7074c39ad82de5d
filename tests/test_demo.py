"""``attnkit.demo.run_demo``: trains, then writes the attention report itself (also from Python,
with no CLI registration involved)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
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
