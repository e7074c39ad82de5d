"""The training loop: schedule, data order, exact resume, interruption, early stopping."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from attnkit.train import loop as train_loop
from attnkit.train.checkpoint import latest_checkpoint
from attnkit.train.config import ConfigError, resolve_config
from attnkit.train.data import collate, epoch_batches
from attnkit.train.loop import metric_is_minimized, train
from attnkit.train.schedule import warmup_cosine

REPO = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path: Path, model: dict[str, Any] | None = None,
                task_options: dict[str, Any] | None = None, **train_options: Any):
    raw = {"task": {"name": "digits", "options": task_options or {}}, "preset": "tiny",
           "out_dir": str(tmp_path),
           "model": {"family": "vit", **(model or {})},
           "train": {"epochs": 3, "batch_size": 128, "progress": False, "tensorboard": False,
                     "num_threads": 1, "eval_batch_size": 512, **train_options}}
    return resolve_config(raw)


def test_warmup_cosine() -> None:
    lrs = [warmup_cosine(s, total_steps=10, peak_lr=1.0, warmup_steps=2) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))  # decays after warmup
    assert warmup_cosine(10, total_steps=10, peak_lr=1.0, warmup_steps=2,
                         min_lr_ratio=0.1) == pytest.approx(0.1)


def test_epoch_batches_are_reproducible_and_sharded() -> None:
    a = epoch_batches(10, batch_size=3, seed=1, epoch=2)
    assert a == epoch_batches(10, batch_size=3, seed=1, epoch=2)
    assert a != epoch_batches(10, batch_size=3, seed=1, epoch=3)
    assert sorted(i for b in a for i in b) == list(range(10))
    shards = [epoch_batches(11, batch_size=2, seed=0, epoch=0, rank=r, world_size=2)
              for r in range(2)]
    assert len(shards[0]) == len(shards[1])  # every process steps equally often under DDP
    assert set(i for s in shards for b in s for i in b) == set(range(11))


def test_collate_pads_tokens_and_frames() -> None:
    batch = collate([(torch.tensor([5, 6, 7]), torch.tensor(1)),
                     (torch.tensor([8]), torch.tensor(0))], pad_id=0)
    assert batch.inputs.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.lengths is not None and batch.lengths.tolist() == [3, 1]
    frames = collate([(torch.randn(4, 2), 1), (torch.randn(2, 2), 0)])
    assert frames.inputs.shape == (2, 4, 2) and float(frames.inputs[1, 2:].abs().sum()) == 0.0
    same = collate([(torch.randn(1, 8, 8), 3), (torch.randn(1, 8, 8), 4)])
    assert same.lengths is None and same.targets.tolist() == [3, 4]


def test_metric_direction() -> None:
    assert metric_is_minimized("loss") and metric_is_minimized("perplexity")
    assert not metric_is_minimized("accuracy") and not metric_is_minimized("bleu")


def _comparable(history: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["epoch"], r["step"], r["lr"], json.dumps(r["train"]), json.dumps(r["val"]))
            for r in history]


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout, augmentation RNG, data order, optimizer and schedule all continue exactly.

    The run is interrupted (KeyboardInterrupt, as Ctrl-C) in the middle of its second epoch;
    the last checkpoint is mid-epoch (checkpoint_every=7)."""
    options = {"checkpoint_every": 7}
    model = {"dropout": 0.1}
    shifts = {"augment_shift": 1}  # random shifts draw from the RNG too
    full = train(tiny_config(tmp_path, model, shifts, **options), run_dir=tmp_path / "full")

    calls = {"n": 0}
    original = train_loop.collect_auxiliary_losses

    def interrupt_at_step_18(module: torch.nn.Module) -> Any:
        calls["n"] += 1
        if calls["n"] == 18:
            raise KeyboardInterrupt
        return original(module)

    monkeypatch.setattr(train_loop, "collect_auxiliary_losses", interrupt_at_step_18)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, model, shifts, **options), run_dir=tmp_path / "cut")
    monkeypatch.setattr(train_loop, "collect_auxiliary_losses", original)
    last = latest_checkpoint(tmp_path / "cut" / "checkpoints")
    assert last is not None and last.name == "step-00000014"

    resumed = train(tiny_config(tmp_path, model, shifts, **options), run_dir=tmp_path / "cut",
                    resume=True)
    assert resumed.steps == full.steps == 30
    assert resumed.step_losses == full.step_losses[14:]  # bit for bit
    assert _comparable(resumed.history) == _comparable(full.history)
    assert resumed.test == full.test
    a = load_file(str(tmp_path / "full" / "best" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "best" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_stops_when_the_metric_stalls(tmp_path: Path) -> None:
    # lr 1e-12 leaves float32 weights unchanged: the metric cannot improve after epoch 1
    result = train(tiny_config(tmp_path, epochs=20, lr=1e-12, patience=2),
                   run_dir=tmp_path / "r")
    assert result.stopped_early
    assert len(result.history) == 3  # best at epoch 1, then two evaluations without progress
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["best"]["epoch"] == 1
    assert set(metrics["test"]) >= {"accuracy", "loss"}


def test_auxiliary_losses_are_added(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def fake_aux(module: torch.nn.Module) -> torch.Tensor:
        # A loss on the parameters: the update must differ from a run without it.
        value = sum(p.square().sum() for p in module.parameters())
        seen.append(float(value.detach()))
        return value  # type: ignore[return-value]

    base = train(tiny_config(tmp_path, epochs=1, max_steps=2), run_dir=tmp_path / "a")
    monkeypatch.setattr(train_loop, "collect_auxiliary_losses", fake_aux)
    with_aux = train(tiny_config(tmp_path, epochs=1, max_steps=2, aux_loss_weight=10.0),
                     run_dir=tmp_path / "b")
    assert len(seen) == 2
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-00000002" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert base.steps == with_aux.steps == 2


def test_max_minutes_stops_training_then_validates_and_tests(tmp_path: Path) -> None:
    result = train(tiny_config(tmp_path, epochs=50, max_minutes=1e-6), run_dir=tmp_path / "r")
    # One step, then a partial-epoch validation kept out of the history (a resume with a larger
    # budget continues that epoch exactly), then the test split with the current weights.
    assert result.steps == 1 and result.history == []
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["stopped"]["step"] == 1 and "accuracy" in metrics["stopped"]["val"]
    assert "accuracy" in result.test
    with pytest.raises(ConfigError, match=r"train\.max_minutes=0\.0 is not allowed"):
        tiny_config(tmp_path, max_minutes=0.0)
    assert not (tmp_path / "bad").exists()
