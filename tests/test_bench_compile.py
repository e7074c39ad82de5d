"""attnkit bench compile: eager and compiled models timed side by side, CSV + Markdown."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnkit.bench.compile_speed import compile_speed
from attnkit.cli import main


@pytest.mark.slow
def test_rows_time_both_passes() -> None:
    rows = compile_speed(families=["vit"], batch=2, repeats=1, backend="aot_eager")
    assert [(r["family"], r["pass"]) for r in rows] == [("vit", "forward"), ("vit", "train step")]
    for row in rows:
        assert row["eager_ms"] > 0 and row["compiled_ms"] > 0 and row["compile_s"] > 0
        assert row["speedup"] == pytest.approx(row["eager_ms"] / row["compiled_ms"])


def test_unknown_family_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown family 'gpt'"):
        compile_speed(families=["gpt"])
    with pytest.raises(SystemExit):
        main(["bench", "compile", "--family", "gpt", "--out", str(tmp_path)])
    assert "invalid choice: 'gpt'" in capsys.readouterr().err
