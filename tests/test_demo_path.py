"""`attnkit demo` and `attnkit train --task digits` take one path (the digits task's tuned
defaults), the demo model sees 16 tokens, and `attnkit faithfulness` works on its run."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnkit.cli import main
from attnkit.demo import DEMO_CONFIG, run_demo
from attnkit.tasks.digits import TUNED_TRAINING
from attnkit.train.config import apply_overrides, resolve_for_task


def test_train_digits_uses_the_demo_defaults() -> None:
    plain, _ = resolve_for_task({"task": {"name": "digits"}})
    demo, _ = resolve_for_task(dict(DEMO_CONFIG))
    assert plain == demo
    assert plain.preset == "vit_tiny_digits" and plain.model.patch_size == 2
    assert plain.model.pooling == "mean"
    for key, value in TUNED_TRAINING.items():
        assert getattr(plain.train, key) == value
    mine, _ = resolve_for_task(apply_overrides({"task": {"name": "digits"}},
                                               ["train.epochs=3", "train.lr=1e-3"]))
    assert mine.train.epochs == 3 and mine.train.lr == 1e-3  # the user's keys win
    assert mine.train.batch_size == TUNED_TRAINING["batch_size"]


def test_demo_run_has_16_tokens_and_faithfulness_works(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_demo(overrides=["train.max_steps=3", "train.tensorboard=false"],
                      out_dir=str(tmp_path), progress=False)
    out = capsys.readouterr().out
    assert "digits test accuracy" in out and result.steps == 3
    assert main(["faithfulness", str(result.run_dir), "--examples", "8", "--steps", "4"]) == 0
    table = capsys.readouterr().out
    assert "4x4 patches" in table  # a 2x2-patch model of 8x8 images: 16 tokens
    assert "| attention rollout (mean of rows) |" in table and "random order" in table
