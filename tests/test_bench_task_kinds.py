"""``attnkit bench task-kinds``: one run per attention kind, accuracy table and noise curves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from attnkit.bench.task_kinds import KindResult, compare_kinds, markdown_table
from attnkit.cli import main

TINY_RUN = {
    "task": {"name": "copy", "options": {"num_train": 64, "num_val": 16, "num_test": 16}},
    "preset": "tiny",
    "train": {"epochs": 1, "max_steps": 2, "batch_size": 16, "tensorboard": False,
              "progress": False, "num_threads": 1},
}


def test_compare_kinds_writes_one_row_per_kind(tmp_path: Path) -> None:
    raw = {"task": {"name": "digits"}, "model": {"family": "vit", "patch_size": 4},
           "preset": "tiny", "train": TINY_RUN["train"]}
    results = compare_kinds(raw, ["mha", "linear"], out_dir=tmp_path, levels=[0.0, 0.5],
                            noise_examples=None, log=lambda line: None)
    assert [r.kind for r in results] == ["mha", "linear"]
    assert all(not r.error and 0.0 <= r.test_accuracy <= 1.0 for r in results)
    assert all(len(r.robustness) == 2 and r.parameters > 0 for r in results)
    rows = list(csv.DictReader((tmp_path / "task_kinds.csv").open()))
    assert [row["kind"] for row in rows] == ["mha", "linear"]
    assert {"acc@0", "acc@0.5", "test_accuracy"} <= set(rows[0])
    assert (tmp_path / "robustness.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "task_kinds.json").read_text())
    assert saved["levels"] == [0.0, 0.5] and len(saved["results"]) == 2
    # The noiseless point over the whole test split is the test accuracy of the best weights.
    assert results[0].robustness[0] == pytest.approx(results[0].test_accuracy, abs=1e-9)


def test_a_kind_that_fails_is_kept_as_a_row_with_its_error(tmp_path: Path) -> None:
    raw = {**TINY_RUN, "model": {"family": "decoder"}}  # copy is seq2seq: decoder cannot fit
    results = compare_kinds(raw, ["mha"], out_dir=tmp_path, levels=[], log=lambda line: None)
    assert "does not fit task 'copy'" in results[0].error
    assert "| mha | failed: ValueError" in markdown_table(results, [])
    assert "failed" in (tmp_path / "task_kinds.md").read_text()


def test_unknown_kind_is_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown attention kind.*available"):
        compare_kinds(TINY_RUN, ["mha", "nope"], out_dir=tmp_path)


def test_markdown_table_formats_percentages() -> None:
    table = markdown_table([KindResult("mha", test_accuracy=0.5, parameters=1234,
                                       train_seconds=3.0, robustness=[0.5, 0.25])], [0, 0.1])
    assert "| mha | 50.00 | 1,234 | 3 | 50.0 | 25.0 |" in table


def test_cli_rejects_bad_levels(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "task-kinds", "--levels", "0,x"])
    assert "comma-separated numbers" in capsys.readouterr().err
