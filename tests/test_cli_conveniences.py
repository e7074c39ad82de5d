"""CLI behaviour users of other tools expect: --version, list, --debug, one-line OS errors,
--device, plain progress lines in logs, generation input checks, quiet non-zero ranks."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch

import attnkit
from attnkit.cli import main
from attnkit.models.generation import SamplingConfig, sample_next
from attnkit.train.progress import PlainProgress

TINY = ["--preset", "tiny", "--epochs", "1", "--set", "train.tensorboard=false", "--no-progress",
        "--set", "train.num_threads=1"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == \
        f"attnkit {attnkit.__version__}"


@pytest.mark.parametrize("what,expected", [("tasks", "digits"), ("presets", "vit_tiny_digits"),
                                           ("kinds", "gated"), ("backends", "blocked")])
def test_list(what: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", what]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    line = next(line for line in lines if line.split()[0] == expected)
    assert len(line.split(None, 1)) == 2  # a name and a description
    assert main(["list", what, "--json"]) == 0
    assert expected in json.loads(capsys.readouterr().out)


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["train", "--set", "train.lr=-1"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"train\.lr"):
        main(["train", "--set", "train.lr=-1", "--debug"])
    monkeypatch.setenv("ATTNKIT_DEBUG", "1")
    with pytest.raises(ValueError, match=r"train\.lr"):
        main(["train", "--set", "train.lr=-1"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_folder_is_one_line(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path.chmod(0o500)
    try:
        assert main(["train", *TINY, "--out-dir", str(tmp_path / "runs")]) == 2
    finally:
        tmp_path.chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert "Permission denied" in err and str(tmp_path) in err and "\n" not in err


def test_os_errors_name_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", *TINY, "--out-dir", str(blocker)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(blocker) in err and "\n" not in err
    assert main(["eval", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_device_option_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    from attnkit.cli import build_parser

    parser = build_parser()
    for command in (["train"], ["eval", "r"], ["generate", "r", "--prompt", "a"], ["demo"],
                    ["explain", "r"], ["faithfulness", "r"]):
        args = parser.parse_args([*command, "--device", "cpu"])
        assert args.device == "cpu"
    assert main(["eval", "nowhere", "--device", "cuda:x"]) == 2


def test_plain_progress_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = PlainProgress(10, "epoch 1/2", every_seconds=0.0, stream=stream)
    bar.set_postfix(loss="0.5000")
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "epoch 1/2: 1/10 steps, loss=0.5000" and "\r" not in stream.getvalue()
    assert len(lines) == 3  # one per update; close adds nothing new
    quiet = io.StringIO()
    short = PlainProgress(10, "e", every_seconds=3600.0, stream=quiet)
    short.update(5)
    short.close()  # a short epoch: the loop's per-epoch line is enough
    assert quiet.getvalue() == ""
    long = PlainProgress(10, "e", every_seconds=0.0, stream=quiet)
    long.update(1)
    long.every = 3600.0
    long.update(4)
    long.close()  # the last line covers the steps since the previous one
    assert quiet.getvalue().splitlines() == ["e: 1/10 steps", "e: 5/10 steps"]


def test_suppressed_ids_are_never_sampled() -> None:
    logits = torch.tensor([[9.0, 1.0, 0.5, 0.0]] * 4)  # the pad id 0 is by far the likeliest
    greedy = sample_next(logits, SamplingConfig(suppress_ids=(0,)))
    assert greedy.tolist() == [1, 1, 1, 1]
    generator = torch.Generator().manual_seed(0)
    sampled = [sample_next(logits, SamplingConfig(temperature=5.0, suppress_ids=(0, 2)),
                           generator) for _ in range(50)]
    assert not set(torch.cat(sampled).tolist()) & {0, 2}


def _seq2seq_run(tmp_path: Path) -> Path:
    assert main(["train", "--task", "copy", *TINY, "--set", "train.max_steps=2",
                 "--set", "task.options={num_train: 64, num_val: 16, num_test: 16}",
                 "--out-dir", str(tmp_path), "--name", "s"]) == 0
    return tmp_path / "s"


def test_seq2seq_generate_checks_its_input(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = _seq2seq_run(tmp_path)
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "1 2 3", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out.strip()
    assert all(part.isdigit() for part in out.split())  # symbols only: no pad, no bos
    assert main(["generate", str(run), "--prompt", "hello"]) == 2
    err = capsys.readouterr().err
    assert "not in task 'copy''s input format: " in err and "e.g. --prompt '" in err
    assert main(["generate", str(run), "--prompt", "1 2", "--temperature", "0.7",
                 "--top-k", "3"]) == 2
    err = capsys.readouterr().err
    assert "--temperature, --top-k" in err and "decode greedily" in err


def test_only_rank_zero_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it for the second process
    assert main(["train", "--set", "train.lr=-1"]) == 2
    assert capsys.readouterr().err == ""


def test_max_minutes_under_ddp_is_refused_before_a_directory_exists(tmp_path: Path) -> None:
    from attnkit.train import distributed, loop
    from attnkit.train.config import resolve_config

    config = resolve_config({"preset": "tiny", "out_dir": str(tmp_path),
                             "train": {"max_minutes": 1.0}}, family="vit")
    info = distributed.DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    from attnkit.tasks import get_task

    with pytest.raises(attnkit.UsageError, match=r"train\.max_minutes is for single-process"):
        loop._prepare(config, get_task("digits"), info)
    assert list(tmp_path.iterdir()) == []


def test_prompt_characters_that_would_become_padding_are_refused() -> None:
    from types import SimpleNamespace

    from attnkit.errors import UsageError
    from attnkit.train.commands import _encode_prompt

    alphabet = "abc"
    task = SimpleNamespace(name="t", pad_id=0, extra={}, test=[],
                           encode=lambda s: [alphabet.index(c) + 1 if c in alphabet else 0
                                             for c in s])
    assert _encode_prompt(task, "cab") == [3, 1, 2]
    with pytest.raises(UsageError, match=r"outside task 't''s vocabulary: \['x', 'y'\]"):
        _encode_prompt(task, "axby")
    with pytest.raises(UsageError, match="no tokens"):
        _encode_prompt(task, "")
