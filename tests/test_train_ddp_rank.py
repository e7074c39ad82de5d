"""Rank 0 of a data-parallel run, in this process: what the loop does only under DDP.

The environment says rank 0 of 2 (as torchrun sets it) and a one-process gloo group stands in
for the world, so the collectives run for real over this process alone: the DDP wrapper, the
run-directory broadcast and its error forwarding, the summed epoch statistics and stop flags,
the barrier and the parameter checksums of the final test. The two-process run itself is
tests/test_cli_train.py's torchrun test (seconds of process start-up, not for every change)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from attnkit.errors import UsageError
from attnkit.tasks import get_task
from attnkit.train import distributed
from attnkit.train import loop as train_loop
from attnkit.train.checkpoint import load_weights
from attnkit.train.config import resolve_config
from attnkit.train.data import epoch_batches
from attnkit.train.run import build_run_model

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch built without torch.distributed / gloo")


@contextlib.contextmanager
def rank_zero_of_two(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """WORLD_SIZE=2, RANK=0 and a one-process gloo group; train() destroys it at its end."""
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(autouse=True)
def gathered(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The values this rank gathers; the other rank's: the same (a one-process group cannot
    gather two)."""
    values: list[float] = []

    def gather_of_equal_ranks(value: float, info: distributed.DistInfo) -> list[float]:
        values.append(value)
        return [value] * info.world_size

    monkeypatch.setattr(distributed, "all_gather_floats", gather_of_equal_ranks)
    return values


def _config(tmp_path: Path, **train_options: Any) -> Any:
    return resolve_config({"task": {"name": "digits"}, "preset": "tiny", "out_dir": str(tmp_path),
                           "model": {"family": "vit"},
                           "train": {"epochs": 1, "batch_size": 256, "progress": False,
                                     "tensorboard": False, "num_threads": 1, **train_options}})


def test_rank_zero_trains_its_shard_under_ddp_and_reports_the_checksums(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gathered: list[float]) -> None:
    """The model is wrapped in DDP (find_unused_parameters as configured, no device_ids on the
    CPU); rank 0 steps through its half of each epoch; the final test reports the world size
    and every rank's checksum of the best weights (the other rank's: the same, as DDP keeps
    them equal)."""
    wrapped: list[Any] = []
    real_objective_for = train_loop.objective_for

    def spying_objective_for(task: Any) -> Any:
        objective = real_objective_for(task)

        def spy(model: Any, *args: Any) -> Any:
            if torch.is_grad_enabled():  # a training step (evaluation runs the inner model)
                wrapped.append((type(model), getattr(model, "find_unused_parameters", None),
                                getattr(model, "device_ids", None)))
            return objective(model, *args)
        return spy

    monkeypatch.setattr(train_loop, "objective_for", spying_objective_for)
    config = _config(tmp_path, epochs=2, ddp_find_unused_parameters=True)
    with rank_zero_of_two(monkeypatch):
        result = train_loop.train(config, run_dir=tmp_path / "r")
    assert not dist.is_initialized()  # train() left the group
    task = get_task("digits")
    shard = [len(epoch_batches(len(task.train), batch_size=256, seed=config.train.seed,
                               epoch=e, rank=0, world_size=2)) for e in range(2)]
    assert result.steps == sum(shard) and [r["step"] for r in result.history] == [
        shard[0], sum(shard)]
    assert set(wrapped) == {(DistributedDataParallel, True, None)} and len(wrapped) == sum(shard)
    best = build_run_model(config, task, None)
    load_weights(best, tmp_path / "r" / "best" / "model.safetensors")
    checksum = sum(float(p.detach().double().sum()) for p in best.parameters())
    assert gathered == [pytest.approx(checksum, rel=1e-12, abs=1e-9)]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["ddp"] == {"world_size": 2, "param_checksums": [gathered[0]] * 2}
    assert metrics["steps"] == sum(shard)


def test_a_run_directory_error_on_rank_zero_reaches_every_rank_as_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 broadcasts the error instead of a directory (the other ranks must not wait
    forever); a single process raises the error itself."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = _config(blocker / "runs", max_steps=1)  # out_dir under a file: mkdir fails
    with pytest.raises(OSError) as alone:
        train_loop.train(config)
    assert not isinstance(alone.value, UsageError)
    with rank_zero_of_two(monkeypatch), pytest.raises(UsageError) as forwarded:
        train_loop.train(config)
    assert str(forwarded.value) == str(alone.value) and str(alone.value)
    assert not dist.is_initialized()
    with rank_zero_of_two(monkeypatch):  # a new directory's name reaches the ranks
        made = train_loop.train(_config(tmp_path / "out", max_steps=1))
    assert made.run_dir.parent == tmp_path / "out" and made.run_dir.name.startswith("digits-vit")
    assert (made.run_dir / "metrics.json").is_file() and made.steps == 1


def test_each_rank_gets_the_same_weights_and_its_own_dropout_stream(tmp_path: Path) -> None:
    """The model is built from train.seed on every process; the RNG is then reseeded per rank
    (dropout and augmentation differ between processes, reproducibly)."""
    task = get_task("digits")
    config = _config(tmp_path)
    draws, weights = {}, {}
    for rank in (0, 1, 0):
        info = distributed.DistInfo(rank=rank, world_size=2, local_rank=rank,
                                    device=torch.device("cpu"))
        run = train_loop._prepare(config, task, info)
        draw = torch.rand(8)
        assert train_loop._batches(config, task, info, 1) == epoch_batches(
            len(task.train), batch_size=256, seed=config.train.seed, epoch=1, rank=rank,
            world_size=2)  # this rank's shard
        if rank in draws:
            assert torch.equal(draw, draws[rank])
        draws[rank] = draw
        weights[rank] = [p.detach().clone() for p in run.model.parameters()]
    assert not torch.equal(draws[0], draws[1])
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1], strict=True))
    torch.manual_seed(config.train.seed)
    weights_stream = torch.rand(8)  # no rank's dropout continues the weights' stream
    assert not torch.equal(weights_stream, draws[0]) and not torch.equal(weights_stream, draws[1])


def test_sums_over_ranks_are_float64_and_stop_flags_reach_every_rank(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The epoch statistics are summed in float64 (a float32 sum would round 2**24 + 1); a stop
    request on any rank stops all of them."""
    from attnkit.train.interrupts import StopRequests

    info = distributed.DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    stops = StopRequests()
    with rank_zero_of_two(monkeypatch):
        assert distributed.sum_floats([2.0**24 + 1.0, 0.1], info) == [2.0**24 + 1.0, 0.1]
        assert not train_loop._stop_requested(stops, info)
        stops.requested = "SIGINT"
        assert train_loop._stop_requested(stops, info)
    alone = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert distributed.sum_floats([0.1, 3.0], alone) == [0.1, 3.0]
