"""The tuning table: defaults exactly as measured, a written config changes the planner's
choice, a malformed one gives one clear line naming the file, and ``bench tune`` writes one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnkit import masks
from attnkit.backends import tuning
from attnkit.backends.blocked import TileSizes
from attnkit.backends.blocked_fused import make_plan
from attnkit.functional.math import validate
from attnkit.layers import build_attention


@pytest.fixture
def tuning_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the engine at a fresh tuning file; forget what it read before and after."""
    path = tmp_path / "attnkit" / "tuning.json"
    monkeypatch.setenv(tuning.ENV_VAR, str(path))
    tuning.reset()
    yield path
    tuning.reset()


def _band_spec(window: int = 64) -> object:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 512, 8, generator=gen) for _ in range(3))
    return validate(q, k, v, mask=masks.sliding_window(window), bias=None, scale=None,
                    softcap=None, dropout_p=0.0)


def test_defaults_are_the_measured_constants(tuning_file: Path) -> None:
    t = tuning.current()
    assert t == tuning.DEFAULTS
    assert (t.band_block, t.band_block_backward, t.band_max_width) == (32, 128, 1024)
    assert (t.piece_elements, t.min_full_tiles_to_split, t.max_mask_elements) == (
        1 << 21, 4, 1 << 24)
    assert (t.fused_block_q, t.fused_block_k, t.pure_block_q, t.pure_block_k) == (
        128, 128, 256, 512)
    assert (t.kernel_noncausal_chunk, t.kernel_causal_chunk, t.span_block) == (512, 128, 256)
    assert t.gpu_dense_mask_max_elements == 1 << 28
    assert TileSizes().resolved(fused=True) == (128, 128)


def test_written_config_changes_the_planners_choice(tuning_file: Path) -> None:
    spec = _band_spec()
    assert make_plan(spec, 128, 128).band_block == 32
    tuning.write({"band_block": 64, "fused_block_q": 96}, tuning_file)
    tuning.reset()
    plan = make_plan(spec, *TileSizes().resolved(fused=True))
    assert plan.band_block == 64
    assert plan.for_backward().band_block == 128  # unchanged: the default
    assert TileSizes().resolved(fused=True) == (96, 128)
    # A band wider than band_max_width leaves the band plan for tiles.
    tuning.write({"band_max_width": 16}, tuning_file)
    tuning.reset()
    assert make_plan(spec, 128, 128).band_block is None
    tuning.write({"kernel_noncausal_chunk": 300, "span_block": 7}, tuning_file)
    tuning.reset()
    assert build_attention("performer", dim=16, num_heads=2).noncausal_chunk == 300
    assert build_attention("adaptive_span", dim=16, num_heads=2).block == 7
    assert build_attention("performer", dim=16, num_heads=2, noncausal_chunk=9).noncausal_chunk \
        == 9


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "cannot be read"),
    ('["a list"]', 'needs an object with a "values" object'),
    ('{"version": 1, "values": {"band_blok": 64}}', "unknown keys \\['band_blok'\\]"),
    ('{"version": 1, "values": {"band_block": 0}}', "band_block must be a positive integer"),
    ('{"version": 1, "values": {"band_block": "64"}}', "band_block must be a positive integer"),
    ('{"version": 1, "values": {"band_block": true}}', "band_block must be a positive integer"),
    ('{"version": 7, "values": {}}', "has version 7"),
])
def test_malformed_config_gives_one_line_naming_the_file(tuning_file: Path, content: str,
                                                          message: str) -> None:
    tuning_file.parent.mkdir(parents=True)
    tuning_file.write_text(content)
    with pytest.raises(tuning.TuningFileError, match=message) as caught:
        tuning.current()
    text = str(caught.value)
    assert str(tuning_file) in text and "\n" not in text and "attnkit bench tune" in text
    # The error reaches the user through the first attention call.
    with pytest.raises(tuning.TuningFileError):
        build_attention("performer", dim=16, num_heads=2)


def test_override_restores_and_write_is_checked(tuning_file: Path) -> None:
    with tuning.override(band_block=8) as t:
        assert t.band_block == 8 == tuning.current().band_block
    assert tuning.current().band_block == 32
    with pytest.raises(ValueError, match="positive integer"):
        tuning.write({"band_block": -1}, tuning_file)
    assert not tuning_file.exists()


@pytest.mark.slow
def test_bench_tune_writes_a_config_the_engine_reads(tuning_file: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from attnkit.bench.tune import TuneConfig, run_tune

    config = TuneConfig(length=256, heads=2, repeats=1, band_blocks=(16, 32),
                        band_blocks_backward=(32, 64), fused_tiles=(64, 128),
                        noncausal_chunks=(64, 128))
    values, choices = run_tune(config)
    assert set(values) == {"band_block", "band_block_backward", "fused_block_q",
                           "fused_block_k", "kernel_noncausal_chunk"}
    assert all(len(c.seconds) == 2 and min(c.seconds.values()) > 0 for c in choices)
    written = json.loads(tuning_file.read_text())
    assert written["values"] == values and written["measured"]["length"] == 256
    assert tuning.current().band_block == values["band_block"]
    assert "wrote" in capsys.readouterr().out


def test_default_path_and_the_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """Without $ATTNKIT_TUNING the file is the user config folder's tuning.json; write makes
    missing folders and leaves exactly the documented, stable JSON (no temporary file); a file
    without a version is read as the current format."""
    import platformdirs

    monkeypatch.delenv(tuning.ENV_VAR, raising=False)
    assert tuning.default_path() == Path(platformdirs.user_config_dir("attnkit")) / "tuning.json"
    target = tmp_path / "a" / "b" / "tuning.json"
    tuning.write({"band_block": 64}, target)
    expected = {"version": tuning.FORMAT_VERSION, "values": {"band_block": 64}, "measured": {}}
    assert target.read_text() == json.dumps(expected, indent=2, sort_keys=True) + "\n"
    assert [p.name for p in target.parent.iterdir()] == ["tuning.json"]
    tuning.write({"band_block": 32}, target, measured={"machine": "test"})
    assert json.loads(target.read_text())["measured"] == {"machine": "test"}
    target.write_text(json.dumps({"values": {"band_block": 32}}))
    assert tuning.load(target).band_block == 32
