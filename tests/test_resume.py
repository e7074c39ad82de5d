"""Resume: bit-identical in a fresh process after a budget stop, SIGINT, SIGTERM and SIGKILL at
random steps (one run interrupted again and again), and the error paths of ``--resume``.

The subprocess legs keep the model tiny; most of their time is the interpreter starting.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from attnkit.cli import main
from attnkit.train.checkpoint import latest_checkpoint
from attnkit.train.config import resolve_config
from attnkit.train.loop import train

REPO = Path(__file__).resolve().parents[1]
EPOCHS, BATCH = 2, 32  # 40 steps per epoch of the 1,258 digits training images


def _raw(out_dir: Path, **train_options: Any) -> dict[str, Any]:
    return {"task": {"name": "digits", "options": {"augment_shift": 1}}, "preset": "tiny",
            "out_dir": str(out_dir), "model": {"family": "vit", "dropout": 0.1},
            "train": {"epochs": EPOCHS, "batch_size": BATCH, "progress": False,
                      "tensorboard": False, "num_threads": 1, "eval_batch_size": 512,
                      **train_options}}


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "attnkit.cli", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})


def _latest_step(run: Path) -> int:
    try:
        return int(json.loads((run / "checkpoints" / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def _interrupt(run: Path, sig: signal.Signals, at_step: int) -> tuple[int, str, str]:
    """Resume ``run`` in a fresh process, checkpointing every step; signal it once its latest
    checkpoint reaches ``at_step``."""
    proc = _cli("train", "--resume", str(run), "--no-progress", "--set", "train.max_steps=null",
                "--set", "train.checkpoint_every=1")
    deadline = time.time() + 240
    while _latest_step(run) < at_step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def _state(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = latest_checkpoint(run / "checkpoints")
    assert path is not None
    skeleton = json.loads((path / "state.json").read_text())
    items = dict(skeleton["__items__"])
    items.pop("train_seconds")  # wall-clock measurements differ between runs
    best = dict(items.pop("best_record")["__items__"])
    items["best_record"] = {k: v for k, v in best.items() if k not in ("seconds", "throughput")}
    return load_file(str(path / "state.safetensors")), items


def _history(run: Path) -> list[tuple[Any, ...]]:
    history = json.loads((run / "metrics.json").read_text())["history"]
    return [(r["epoch"], r["step"], r["lr"], json.dumps(r["train"]), json.dumps(r["val"]))
            for r in history]


def test_interrupted_everywhere_resumes_bit_identically(tmp_path: Path) -> None:
    """Budget stop mid-epoch (then max_steps raised), SIGINT, SIGTERM and SIGKILL at random
    steps, each resumed in a fresh process: final weights, optimizer state, RNG, history and
    test scores equal a straight run's bit for bit."""
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    total = EPOCHS * 40
    straight = train(resolve_config(_raw(tmp_path)), run_dir=tmp_path / "straight")
    assert straight.steps == total

    cut = tmp_path / "cut"
    first = train(resolve_config(_raw(tmp_path, max_steps=rng.randrange(5, 35))), run_dir=cut)
    assert first.history == [] and first.steps < 40  # stopped inside the first epoch
    done = first.steps
    for sig, upto in ((signal.SIGINT, 40), (signal.SIGTERM, 60), (signal.SIGKILL, 75)):
        target = rng.randrange(done + 2, upto)
        code, out, err = _interrupt(cut, sig, target)
        context = f"seed {seed}, {sig.name} at step {target}: {err[-1500:]}"
        assert f"resumed from step {done}" in out, context
        if sig is signal.SIGINT:  # the first fresh process raised the budget
            assert "changed setting: train.max_steps" in out, context
        if sig is signal.SIGKILL:
            assert code == -signal.SIGKILL, context
        else:  # a clean stop at the next step boundary, saying how to resume
            assert code == 130, context
            assert f"{sig.name}: stopped at step" in err and "--resume" in err, context
        done = _latest_step(cut)
        assert done >= target, context  # a complete checkpoint at (or after) the signal
    # The last leg in this process (the legs above each resumed in a fresh one).
    final = train(resolve_config(_raw(tmp_path)), run_dir=cut, resume=True)
    assert final.steps == total and final.test == straight.test, f"seed {seed}"

    a = load_file(str(tmp_path / "straight" / "best" / "model.safetensors"))
    b = load_file(str(cut / "best" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"seed {seed}"
    (ta, sa), (tb, sb) = _state(tmp_path / "straight"), _state(cut)
    assert sa == sb and ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta), f"seed {seed}"  # optimizer and RNG
    assert _history(cut) == _history(tmp_path / "straight")


def _tiny_run(tmp_path: Path, name: str, *extra: str) -> Path:
    assert main(["train", "--preset", "tiny", "--epochs", "1", "--set", "train.max_steps=3",
                 "--set", "train.tensorboard=false", "--no-progress", "--set",
                 "train.num_threads=1", "--out-dir", str(tmp_path), "--name", name,
                 *extra]) == 0
    return tmp_path / name


def test_resume_refuses_changes_that_cannot_resume_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _tiny_run(tmp_path, "r")
    saved = (run / "config.yaml").read_text()
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    capsys.readouterr()
    for change in ("model.num_heads=4", "model.d_model=64", "task.name=listops",
                   "train.batch_size=7", "train.seed=5"):
        assert main(["train", "--resume", str(run), "--set", change]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "cannot resume with" in err, err
        assert change.split("=")[0] in err
    assert main(["train", "--resume", str(run), "--set", "model.num_heads=5"]) == 2
    assert "cannot resume" in capsys.readouterr().err  # 32 % 5: still refused before building
    assert main(["train", "--resume", str(run), "--set", "train.lr=-1"]) == 2
    assert "train.lr=-1 is not allowed" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == saved  # the run is untouched
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == files


def test_resume_error_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    run = _tiny_run(tmp_path, "r")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--config", str(run / "config.yaml")]) == 2
    assert "drop --config" in capsys.readouterr().err
    # A damaged metrics.json is named, and the saved config is not rewritten before that.
    saved = (run / "config.yaml").read_text()
    metrics = (run / "metrics.json").read_bytes()
    (run / "metrics.json").write_text('{"history": [')
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=4"]) == 2
    assert "metrics.json' is damaged" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == saved
    (run / "metrics.json").write_bytes(metrics)
    # An incomplete checkpoint (no manifest: the write never finished) is not resumable.
    for manifest in (run / "checkpoints").glob("step-*/manifest.json"):
        manifest.unlink()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing to resume" in err and "incomplete" in err and "\n" not in err


def test_resume_says_where_it_continues_and_what_changed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _tiny_run(tmp_path, "r")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=5",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resumed from step 3 (epoch 1, batch 3)" in out
    assert "changed setting: train.max_steps 3 -> 5" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 5
    assert json.loads((run / "metrics.json").read_text())["steps"] == 5


def test_resuming_a_run_whose_budget_is_spent_rewrites_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The restored checkpoint is the newest: a resume that stops at once (max_steps already
    reached) neither trains nor writes that checkpoint again."""
    run = _tiny_run(tmp_path, "r")
    checkpoint = run / "checkpoints" / "step-00000003"
    written = {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out  # the epoch in progress is validated for the report again
    assert "resumed from step 3" in out and "budget reached at step 3 (epoch 1, batch 3)" in out
    assert {p.name: p.stat().st_mtime_ns for p in checkpoint.iterdir()} == written
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-00000003"]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3


def test_existing_run_directories_are_never_overwritten(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _tiny_run(tmp_path, "r")
    metrics = (run / "metrics.json").read_text()
    capsys.readouterr()
    assert main(["train", "--preset", "tiny", "--out-dir", str(tmp_path), "--name", "r"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "--resume" in err
    assert (run / "metrics.json").read_text() == metrics
    (run / "stale.txt").write_text("old")
    _tiny_run(tmp_path, "r", "--overwrite", "--set", "train.max_steps=2")
    assert not (run / "stale.txt").exists()
    assert json.loads((run / "metrics.json").read_text())["steps"] == 2


def test_a_locked_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attnkit.train.rundir import lock_run_dir

    run = _tiny_run(tmp_path, "r")
    capsys.readouterr()
    lock = lock_run_dir(run)  # as another process training it would hold
    try:
        # filelock locks are per process on Linux (flock on a new descriptor conflicts)
        assert main(["train", "--resume", str(run)]) == 2
        assert "in use by another attnkit process" in capsys.readouterr().err
    finally:
        lock.release()


def test_sigterm_in_process_saves_then_raises(tmp_path: Path) -> None:
    """The stop request lands mid-epoch; a checkpoint at the next step boundary follows."""
    from attnkit.train import loop
    from attnkit.train.interrupts import TrainingInterrupted

    calls = {"n": 0}
    original = loop._step

    def step_then_signal(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args)

    loop_step = loop._step
    loop._step = step_then_signal  # type: ignore[assignment]
    try:
        with pytest.raises(TrainingInterrupted, match="SIGTERM: stopped at step 5"):
            train(resolve_config(_raw(tmp_path)), run_dir=tmp_path / "t")
    finally:
        loop._step = loop_step  # type: ignore[assignment]
    assert _latest_step(tmp_path / "t") == 5
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
