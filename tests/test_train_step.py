"""One optimizer step of the training loop, by value: the scheduled learning rate written to
the optimizer, the task loss plus the weighted auxiliary loss, gradient clipping to the
configured global norm, the counters and the refusal of a non-finite loss.

The model is a bias-free linear map trained with plain SGD, so each update is
``w - lr * clipped(grad)`` and can be recomputed by hand."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from attnkit.train import distributed
from attnkit.train import loop as train_loop
from attnkit.train.config import resolve_config
from attnkit.train.schedule import warmup_cosine

X = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # the batch: loss = w . x, grad x (norm 5)


def _run(tmp_path: Path, **train_options: Any) -> Any:
    config = resolve_config({"task": {"name": "digits"}, "preset": "tiny",
                             "out_dir": str(tmp_path), "model": {"family": "vit"},
                             "train": {"lr": 0.5, "min_lr_ratio": 0.1, **train_options}})
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    info = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    run = train_loop._Run(config=config, task=SimpleNamespace(name="stub"),  # type: ignore[arg-type]
                          info=info, model=model,
                          optimizer=torch.optim.SGD(model.parameters(), lr=123.0),
                          progress=train_loop._Progress(step=3, batch=1), total_steps=10,
                          warmup=2)
    run.wrapped = model
    return run


def _objective(seen: list[tuple[Any, ...]]) -> Any:
    def objective(model: nn.Module, batch: torch.Tensor, task: Any, smoothing: float
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
        seen.append((model, batch, task, smoothing))
        return model(batch).sum(), {"count": len(batch)}
    return objective


def _clipped(grad: list[float], max_norm: float | None) -> list[float]:
    """torch.nn.utils.clip_grad_norm_'s scaling: max_norm / (norm + 1e-6), never above 1."""
    if max_norm is None:
        return grad
    scale = min(1.0, max_norm / (math.sqrt(sum(g * g for g in grad)) + 1e-6))
    return [g * scale for g in grad]


@pytest.mark.parametrize("grad_clip", [1.0, 100.0, None])
def test_a_step_applies_the_scheduled_lr_to_loss_plus_weighted_aux_clipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grad_clip: float | None) -> None:
    run = _run(tmp_path, grad_clip=grad_clip, aux_loss_weight=3.0, label_smoothing=0.2)
    # the layers' auxiliary loss: the sum of the weights (gradient 1 per weight), times 3
    monkeypatch.setattr(train_loop, "collect_auxiliary_losses", lambda m: m.weight.sum())
    seen: list[tuple[Any, ...]] = []
    objective = _objective(seen)
    weight, losses = [1.0, -2.0], []
    for step in (3, 4):  # two steps: the second starts from fresh gradients
        lr = warmup_cosine(step, total_steps=10, peak_lr=0.5, warmup_steps=2, min_lr_ratio=0.1)
        loss, stats = train_loop._step(run, objective, X)
        losses.append(weight[0] * 3.0 + weight[1] * 4.0)
        assert loss == pytest.approx(losses[-1], rel=1e-12)  # the task loss, without aux
        assert stats == {"count": 1}
        grad = _clipped([3.0 + 3.0, 4.0 + 3.0], grad_clip)
        weight = [w - lr * g for w, g in zip(weight, grad)]
        assert run.model.weight.detach().flatten().tolist() == pytest.approx(weight, rel=1e-12)
        assert run.lr == lr and run.optimizer.param_groups[0]["lr"] == lr
        assert (run.progress.step, run.progress.batch) == (step + 1, step - 1)
    assert [s[1:] for s in seen] == [(X, run.task, 0.2)] * 2 and seen[0][0] is run.wrapped
    assert run.step_losses == pytest.approx(losses, rel=1e-12)


def test_a_step_without_auxiliary_losses_trains_on_the_task_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path, grad_clip=None, aux_loss_weight=3.0)
    monkeypatch.setattr(train_loop, "collect_auxiliary_losses", lambda m: None)
    train_loop._step(run, _objective([]), X)
    lr = warmup_cosine(3, total_steps=10, peak_lr=0.5, warmup_steps=2, min_lr_ratio=0.1)
    assert run.model.weight.detach().flatten().tolist() == pytest.approx(
        [1.0 - lr * 3.0, -2.0 - lr * 4.0], rel=1e-12)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_a_non_finite_loss_stops_with_the_step_and_the_remedy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: float) -> None:
    run = _run(tmp_path)
    monkeypatch.setattr(train_loop, "collect_auxiliary_losses", lambda m: None)

    def objective(model: nn.Module, batch: torch.Tensor, task: Any, smoothing: float
                  ) -> tuple[torch.Tensor, dict[str, Any]]:
        return model(batch).sum() * 0.0 + bad, {}

    with pytest.raises(FloatingPointError) as stopped:
        train_loop._step(run, objective, X)
    assert str(stopped.value) == (f"loss became {bad} at step 4; lower train.lr or raise "
                                  f"train.warmup_fraction")
    assert run.step_losses == []
