"""``attnkit bench lra``: the LRA-style suite, smoke-tested on every task with --quick."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from attnkit.bench.lra import (
    LRA_TASKS,
    SCALES,
    LraCell,
    LraRun,
    markdown_report,
    run_lra,
    task_options,
)
from attnkit.cli import main

INSTALL_WORDS = ("apt-get install", "pip install")


def test_quick_suite_runs_every_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "lra", "--quick", "--kinds", "mha,linear", "--threads", "1",
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "environment: cpu" in out and "torch" in out and "threads 1" in out
    saved = json.loads((tmp_path / "lra.json").read_text())
    assert saved["command"].startswith("attnkit bench lra --quick")
    assert saved["scale"]["lengths"] == "quick" and saved["scale"]["steps"] == 4
    ran = {c["task"] for c in saved["cells"]}
    for spec in LRA_TASKS:  # every task ran, or was skipped with the install command
        info = saved["task_info"][spec.name]
        assert spec.name in ran or any(w in info["skipped"] for w in INSTALL_WORDS), info
    rows = list(csv.DictReader((tmp_path / "lra.csv").open()))
    assert len(rows) == 2 * len(ran)
    for row in rows:
        assert not row["error"], row
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0
        assert float(row["step_s_min"]) <= float(row["step_s"]) <= float(row["step_s_max"])
        assert float(row["step_s"]) > 0 and int(row["steps"]) == 4
        assert int(row["parameters"]) > 0 and int(row["timed_length"]) > 0
    table = (tmp_path / "lra.md").read_text()
    assert "| mha |" in table and "| chance |" in table and "seconds per training step" in table
    assert (tmp_path / "lra.png").stat().st_size > 5000

    # --resume keeps finished cells: nothing is trained again
    code = main(["bench", "lra", "--quick", "--kinds", "mha,linear", "--tasks", "pathfinder",
                 "--resume", "--out", str(tmp_path)])
    assert code == 0
    again = json.loads((tmp_path / "lra.json").read_text())["cells"]
    before = [c for c in saved["cells"] if c["task"] == "pathfinder"]
    assert again == before


def test_resume_refuses_another_scale(tmp_path: Path) -> None:
    (tmp_path / "lra.json").write_text(json.dumps({"scale": {"steps": 1}, "cells": []}))
    with pytest.raises(ValueError, match=r"--resume.*written at scale"):
        run_lra(["pathfinder"], ["mha"], SCALES["quick"], out_dir=tmp_path, command="x",
                resume=True, log=lambda line: None)


def test_unknown_names_are_refused_with_the_choices(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"unknown LRA task.*available"):
        run_lra(["imagenet"], ["mha"], SCALES["quick"], out_dir=tmp_path, command="x")
    with pytest.raises(ValueError, match=r"unknown attention kind.*available"):
        run_lra(["listops"], ["nope"], SCALES["quick"], out_dir=tmp_path, command="x")
    with pytest.raises(SystemExit):
        main(["bench", "lra", "--tasks", "listops,nope"])
    assert "unknown task(s) ['nope']" in capsys.readouterr().err


def test_every_task_has_every_length_setting() -> None:
    for spec in LRA_TASKS:
        for lengths in ("lra", "short", "quick"):
            scale = SCALES["quick"].__class__(lengths=lengths)
            options = task_options(spec, scale, seed=0)
            assert options["seed"] == 0
    with pytest.raises(ValueError, match="lengths must be one of"):
        task_options(LRA_TASKS[0], SCALES["quick"].__class__(lengths="huge"), seed=0)


def test_report_marks_failed_cells_and_chance() -> None:
    run = LraRun(command="attnkit bench lra", scale=SCALES["quick"], environment={"cpu": "x"},
                 tasks=["listops"], kinds=["mha", "linear"], seed=0)
    run.cells = [LraCell("listops", "mha", test_accuracy=0.5, chance=0.25, step_s=0.1,
                         step_s_min=0.09, step_s_max=0.2, peak_mib=12.0),
                 LraCell("listops", "linear", chance=0.25, error="RuntimeError: boom")]
    text = markdown_report(run)
    assert "| mha | 50.0 |" in text and "| linear | failed |" in text
    assert "| chance | 25.0 |" in text and "0.100 [0.090-0.200]" in text
    assert "- listops / linear: RuntimeError: boom" in text
    assert math.isnan(run.cells[1].step_s)


def test_a_single_kind_is_timed_alone(tmp_path: Path) -> None:
    run = run_lra(["pathfinder"], ["linear"], SCALES["quick"], out_dir=tmp_path, command="x",
                  threads=1, log=lambda line: None)
    (cell,) = run.cells
    assert not cell.error and cell.reference == "linear" and cell.speedup == 1.0
    assert 0 < cell.step_s_min <= cell.step_s <= cell.step_s_max
    assert cell.forward_s > 0 and cell.timed_length == 144
