"""Damaged checkpoints: truncate, zero or flip a byte in each file, and every load either
reports the file in one line or falls back to the newest intact checkpoint; never a silent
load."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from attnkit.cli import main
from attnkit.models import build_decoder_lm, get_preset
from attnkit.train import checkpoint as ckpt

FILES = ["model.safetensors", "state.safetensors", "state.json", "manifest.json"]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0xFF  # in the tensor bytes of a safetensors file
    path.write_bytes(bytes(data))


DAMAGE: dict[str, Callable[[Path], None]] = {"truncate": _truncate, "zero": _zero,
                                             "flip": _flip}


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_decoder_lm(get_preset("tiny"), vocab_size=11)


def _two_checkpoints(root: Path) -> tuple[Path, Path]:
    model = _model(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    paths = []
    for step in (1, 2):
        model(torch.randint(0, 11, (2, 5))).sum().backward()
        opt.step()
        paths.append(ckpt.save_checkpoint(root, step=step, model=model, keep=3,
                                          state={"step": step, "opt": opt.state_dict()}))
    return paths[0], paths[1]


@pytest.mark.parametrize("how", sorted(DAMAGE))
@pytest.mark.parametrize("name", FILES)
def test_damaged_latest_checkpoint_is_reported_and_skipped(tmp_path: Path, name: str,
                                                           how: str) -> None:
    older, newest = _two_checkpoints(tmp_path)
    DAMAGE[how](newest / name)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load_checkpoint(newest, _model(1))
    message = str(info.value)
    assert str(newest / name) in message and "\n" not in message
    found, problems = ckpt.newest_intact_checkpoint(tmp_path)
    assert found == older  # the fallback
    assert len(problems) == 1 and str(newest / name) in problems[0]
    assert ckpt.load_checkpoint(older, _model(1))["step"] == 1


@pytest.mark.parametrize("content", [b"", b"{\x01 nonsense", b'{"checkpoint": "../x"}',
                                     b"\xff\xfe"])
def test_damaged_latest_pointer_falls_back_to_the_directories(tmp_path: Path,
                                                              content: bytes) -> None:
    _, newest = _two_checkpoints(tmp_path)
    (tmp_path / ckpt.LATEST).write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=r"latest\.json"):
        ckpt.latest_checkpoint(tmp_path)
    found, problems = ckpt.newest_intact_checkpoint(tmp_path)
    assert found == newest and "latest.json" in problems[0]


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_damaged_saved_weights_fail_clearly(tmp_path: Path, how: str) -> None:
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(_model(0), path)
    DAMAGE[how](path)
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors"):
        ckpt.load_weights(_model(1), path)


def _run_with_damaged(tmp_path: Path, target: str, how: str) -> Path:
    assert main(["train", "--preset", "tiny", "--epochs", "2", "--batch-size", "512",
                 "--set", "train.tensorboard=false", "--no-progress", "--set",
                 "train.num_threads=1", "--out-dir", str(tmp_path), "--name", "r"]) == 0
    run = tmp_path / "r"
    DAMAGE[how](run / target)
    return run


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_cli_resume_falls_back_and_eval_refuses_damaged_best(
        tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run_with_damaged(tmp_path, "checkpoints/step-00000006/state.safetensors", how)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=3",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "step-00000006/state.safetensors" in captured.err and "falling back to " \
        "step-00000003" in captured.err
    assert "resumed from step 3 (epoch 2, batch 0)" in captured.out
    assert json.loads((run / "metrics.json").read_text())["steps"] == 9
    DAMAGE[how](run / "best" / "model.safetensors")
    for argv in (["eval", str(run)], ["explain", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "best/model.safetensors" in err and "damaged" in err, err
        assert "\n" not in err and "Traceback" not in err


def test_weights_saved_without_a_checksum_load_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(_model(0), path)
    (tmp_path / "model.safetensors.sha256").unlink()  # as written before checksums existed
    loaded = _model(1)
    with pytest.warns(UserWarning, match="loaded unverified"):
        ckpt.load_weights(loaded, path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 _model(0).state_dict().values()))
