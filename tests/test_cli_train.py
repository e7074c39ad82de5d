"""``attnkit train / eval / generate / demo``: help, a tiny run, YAML + overrides, clear errors,
and data-parallel training under torchrun with two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from attnkit.cli import main
from attnkit.tasks.base import Task, register_task

REPO = Path(__file__).resolve().parents[1]
FAST = ["--no-progress", "--set", "train.num_threads=1", "--set", "train.eval_batch_size=512"]


@pytest.mark.parametrize("command,expected", [
    ("train", ["--config", "--set", "--attention", "--resume"]),
    ("eval", ["RUN_DIR", "--split"]),
    ("generate", ["--prompt", "--temperature", "--top-k", "--top-p", "--cache"]),
    ("demo", ["digits"]),
])
def test_help(command: str, expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


def test_tiny_train_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--task", "digits", "--model", "vit", "--preset", "tiny",
                 "--attention", "mha,mha", "--set", "model.num_layers=2", "--epochs", "1",
                 "--set", "train.max_steps=4", "--out-dir", str(tmp_path), "--name", "r", *FAST])
    assert code == 0
    out = capsys.readouterr().out
    run = tmp_path / "r"
    assert f"tensorboard --logdir {run / 'tensorboard'}" in out
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # Four steps end inside the first epoch: no validation record yet, a checkpoint to resume
    assert (run / "checkpoints" / "latest.json").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["attention"] == ["mha", "mha"] and config["preset"] == "tiny"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and "accuracy" in metrics["test"]

    assert main(["eval", str(run), "--split", "val"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "val" and 0.0 <= report["metrics"]["accuracy"] <= 1.0
    assert main(["eval", str(run)]) == 0
    test_report = json.loads(capsys.readouterr().out)
    assert test_report["metrics"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_yaml_config_with_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "task": {"name": "digits", "options": {"augment_shift": 0}}, "preset": "tiny",
        "model": {"num_layers": 2, "norm": "rmsnorm"},
        "train": {"lr": 0.01, "epochs": 1, "max_steps": 2, "tensorboard": False}}))
    code = main(["train", "--config", str(cfg), "--set", "train.lr=2e-3", "--set",
                 "model.mlp=swiglu", "--out-dir", str(tmp_path), "--name", "y", *FAST])
    assert code == 0
    saved = yaml.safe_load((tmp_path / "y" / "config.yaml").read_text())
    assert saved["train"]["lr"] == 2e-3  # the command line wins over the file
    assert saved["model"]["num_layers"] == 2 and saved["model"]["norm"] == "rmsnorm"
    assert saved["model"]["mlp"] == "swiglu"
    assert saved["model"]["d_model"] == 32  # from the preset
    assert saved["model"]["family"] == "vit"  # from the task
    assert saved["task"]["options"] == {"augment_shift": 0}


@pytest.mark.parametrize("argv,message", [
    (["train", "--set", "train.lrr=1"], "unknown train option 'lrr'; did you mean 'lr'?"),
    (["train", "--set", "model.d_model=wide"], "model.d_model='wide' is not allowed"),
    (["train", "--set", "train.grad_clip=-1"], "train.grad_clip=-1 is not allowed"),
    (["train", "--device", "foo"], "train.device='foo' is not allowed"),
    (["train", "--config", "."], "is a directory"),
    (["train", "--set", "nonsense"], "must look like section.key=value"),
    (["train", "--config", "no/such/file.yaml"], "does not exist"),
    (["train", "--task", "no-such-task"], "unknown task 'no-such-task'"),
    (["train", "--attention", "no-such-kind", "--preset", "tiny"],
     "unknown attention kind 'no-such-kind'"),
    (["train", "--model", "decoder"], "does not fit task 'digits'"),
    (["train", "--preset", "huge"], "unknown model preset 'huge'"),
    (["eval", "definitely/not/a/run"], "is not a run directory"),
])
def test_bad_options_give_clear_errors(argv: list[str], message: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*argv, "--out-dir", str(tmp_path)] if argv[0] == "train" else argv)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


def test_bad_yaml_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [unclosed\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    assert main(["train", "--config", str(listing)]) == 2
    assert "must hold a mapping" in capsys.readouterr().err


def test_unknown_flag_is_rejected_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--learning-rate", "3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


# A small text task registered here, so generate can be tested without the data packages.
_ALPHABET = "abcdefgh "


class _CharWindows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, text: str, length: int = 16) -> None:
        ids = torch.tensor([_ALPHABET.index(c) + 1 for c in text])
        self.windows = ids.unfold(0, length + 1, length // 2)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows[i, :-1], self.windows[i, 1:]


@register_task("test-chars", "test only: a repeating character pattern")
def _load_test_chars() -> Task:
    text = "abc defgh " * 60
    return Task(name="test-chars", kind="language_model", modality="text",
                train=_CharWindows(text), val=_CharWindows(text[:200]),
                test=_CharWindows(text[:200]), vocab_size=len(_ALPHABET) + 1, metric="loss",
                encode=lambda s: [_ALPHABET.index(c) + 1 for c in s],
                decode=lambda ids: "".join(_ALPHABET[i - 1] for i in ids if i > 0))


def test_generate_from_a_language_model_run(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--task", "test-chars", "--preset", "tiny", "--epochs", "8",
                 "--set", "train.lr=1e-2", "--set", "train.tensorboard=false",
                 "--out-dir", str(tmp_path), "--name", "lm", *FAST]) == 0
    metrics = json.loads((tmp_path / "lm" / "metrics.json").read_text())
    assert metrics["test"]["loss"] < 1.0  # learned the pattern (uniform would be ln 10 = 2.3)
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "lm"), "--prompt", "abc d",
                 "--max-new-tokens", "10"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("abc d") and len(text) == 15
    assert main(["generate", str(tmp_path / "lm"), "--prompt", "abc", "--temperature", "0.8",
                 "--top-k", "3", "--cache", "rolling", "--window", "8",
                 "--max-new-tokens", "20"]) == 0
    assert len(capsys.readouterr().out.strip()) == 23
    # a character outside the vocabulary is an error, not silently the pad id
    assert main(["generate", str(tmp_path / "lm"), "--prompt", "abz"]) == 2
    assert "input format" in capsys.readouterr().err


def test_generate_rejects_a_classifier_run(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--preset", "tiny", "--epochs", "1", "--set", "train.max_steps=1",
                 "--set", "train.tensorboard=false", "--out-dir", str(tmp_path),
                 "--name", "c", *FAST]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "c"), "--prompt", "hi"]) == 2
    assert "no text encode/decode" in capsys.readouterr().err


def test_torchrun_two_cpu_processes_agree(tmp_path: Path) -> None:
    """DDP over gloo: both ranks finish and hold identical weights."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "attnkit.cli", "train", "--task", "digits", "--preset", "tiny",
           "--epochs", "1", "--set", "train.max_steps=5", "--set", "train.tensorboard=false",
           "--set", "model.dropout=0.1", "--out-dir", str(tmp_path), "--name", "ddp", *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    ddp = metrics["ddp"]
    assert ddp["world_size"] == 2
    assert ddp["param_checksums"][0] == ddp["param_checksums"][1]
    assert metrics["steps"] == 5 and "accuracy" in metrics["test"]
