"""The training loop: one function, :func:`train`, for every task kind, family and attention kind.

Per optimizer step: AdamW (decoupled weight decay, Loshchilov & Hutter, 2019) at the
warmup + cosine learning rate, loss = task objective (with label smoothing) + the attention
layers' auxiliary losses, gradient clipping, bf16 autocast on CUDA. Per epoch: validation,
early stopping on the task's metric, best weights, an atomic checkpoint. At the end: the test
split with the best weights. Resuming from a checkpoint continues bit-for-bit (same data order,
dropout RNG, optimizer state and schedule).

The parts, each doing one thing: :func:`_prepare` (build and check everything before a run
directory exists), :func:`_restore` (a checkpoint back into model, optimizer, RNG, counters),
:func:`_train_epoch` and :func:`_step` (the optimizer steps of one epoch), :func:`_end_of_epoch`
(statistics, validation, best weights), :class:`_EarlyStopping`, :class:`_CheckpointPolicy`
(every N steps / M minutes), :func:`_budget_spent` (max_steps / max_minutes) and
:func:`_final_test`. :func:`train` wires them and owns the run directory and its lock.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from attnkit.errors import UsageError
from attnkit.layers import collect_auxiliary_losses
from attnkit.models import default_family
from attnkit.train import distributed
from attnkit.train.checkpoint import (
    load_checkpoint,
    load_weights,
    newest_intact_checkpoint,
    save_checkpoint,
    save_weights,
)
from attnkit.train.config import RunConfig, TrainConfig, load_yaml, run_config_from_dict
from attnkit.train.data import epoch_batches, iterate, make_loader
from attnkit.train.interrupts import StopRequests, TrainingInterrupted
from attnkit.train.logging import RunLogger
from attnkit.train.objectives import metrics_from_stats, objective_for
from attnkit.train.optim import build_optimizer
from attnkit.train.progress import progress_bar
from attnkit.train.run import build_run_model
from attnkit.train.rundir import check_resume, create_run_dir, lock_run_dir, write_config
from attnkit.train.schedule import warmup_cosine

if TYPE_CHECKING:
    from attnkit.tasks.base import Task

__all__ = ["TrainResult", "TrainingInterrupted", "build_optimizer", "evaluate",
           "metric_is_minimized", "train"]

_STAT_KEYS = ("loss_sum", "correct", "count")


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run produced."""

    run_dir: Path  # where config, checkpoints, metrics and TensorBoard logs are
    test: dict[str, float]  # test-split metrics with the best weights
    best: dict[str, Any] | None  # the best validation record
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    step_losses: list[float] = field(default_factory=list)  # this process's per-step losses
    steps: int = 0  # optimizer steps taken in total
    stopped_early: bool = False  # early stopping ended the run
    train_seconds: float = 0.0  # time spent in training epochs (not setup / test)


def metric_is_minimized(metric: str) -> bool:
    """Losses, perplexities and error rates go down; everything else (accuracy, BLEU) up."""
    return any(word in metric for word in ("loss", "perplexity", "error"))


def _budget_spent(t: TrainConfig, step: int, spent: float, epoch_started: float | None) -> bool:
    """Whether ``train.max_steps`` or ``train.max_minutes`` is used up (``spent``: training
    seconds before the current epoch, which started at ``epoch_started``, if running)."""
    if t.max_steps is not None and step >= t.max_steps:
        return True
    if t.max_minutes is None:
        return False
    now = time.perf_counter() - epoch_started if epoch_started is not None else 0.0
    return spent + now >= 60.0 * t.max_minutes


def _improved(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric_is_minimized(metric) else value > best


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    use_bf16 = device.type == "cuda" and precision in ("auto", "bf16")
    if use_bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, task: Task, *, batch_size: int = 256,
             device: torch.device | None = None, precision: str = "auto") -> dict[str, float]:
    """Mean loss and accuracy (perplexity for token tasks) on ``dataset``, plus the task's own
    scores from ``task.evaluate`` if it has one. The model is put in eval mode."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    device = device or next(inner.parameters()).device
    was_training = inner.training
    inner.eval()
    objective = objective_for(task)
    totals = {k: 0.0 for k in _STAT_KEYS}
    try:
        with _autocast(device, precision):
            for batch in iterate(dataset, batch_size=batch_size, pad_id=task.pad_id):
                _, stats = objective(inner, batch.to(device), task, 0.0)
                for k in _STAT_KEYS:
                    totals[k] += float(stats[k])
        metrics = metrics_from_stats(totals, task.kind)
        if task.evaluate is not None:
            metrics.update(task.evaluate(inner, dataset, device))
    finally:
        inner.train(was_training)
    return metrics


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8), device)


@dataclass
class _Progress:
    """Counters that a checkpoint carries so a resumed run continues exactly."""

    epoch: int = 0  # the epoch in progress (or next to start)
    batch: int = 0  # batches of that epoch already done
    step: int = 0  # optimizer steps so far
    best: float | None = None  # best validation metric so far
    best_record: dict[str, Any] | None = None
    bad_evals: int = 0  # evaluations since the last improvement
    stopped_early: bool = False
    train_seconds: float = 0.0
    epoch_stats: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in _STAT_KEYS})

    def to_state(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _batches(config: RunConfig, task: Task, info: distributed.DistInfo, epoch: int
             ) -> list[list[int]]:
    return epoch_batches(len(task.train), batch_size=config.train.batch_size,  # type: ignore[arg-type]
                         seed=config.train.seed, epoch=epoch, rank=info.rank,
                         world_size=info.world_size)


@dataclass
class _CheckpointPolicy:
    """When to save inside an epoch: every N steps and/or every M minutes (epoch ends always)."""

    every_steps: int  # 0: off
    every_minutes: float  # 0: off
    last: float = field(default_factory=time.monotonic)

    def due(self, step: int) -> bool:
        if self.every_steps and step % self.every_steps == 0:
            return True
        return bool(self.every_minutes) and \
            time.monotonic() - self.last >= 60.0 * self.every_minutes

    def saved(self) -> None:
        self.last = time.monotonic()


class _EarlyStopping:
    """Tracks the best validation value; says when ``patience`` evaluations brought nothing."""

    def __init__(self, metric: str, patience: int | None) -> None:
        self.metric, self.patience = metric, patience

    def update(self, progress: _Progress, value: float, record: dict[str, Any]) -> bool:
        """Record one evaluation in ``progress``; True when it is the best so far."""
        if _improved(value, progress.best, self.metric):
            progress.best, progress.best_record, progress.bad_evals = value, record, 0
            return True
        progress.bad_evals += 1
        if self.patience is not None and progress.bad_evals >= self.patience:
            progress.stopped_early = True
        return False


@dataclass
class _Run:
    """Everything one training run works with (built and validated before the run directory)."""

    config: RunConfig
    task: Task
    info: distributed.DistInfo
    model: nn.Module
    optimizer: torch.optim.Optimizer
    progress: _Progress
    total_steps: int  # the schedule's length
    warmup: int  # warmup steps
    run_dir: Path = Path()
    logger: RunLogger | None = None
    wrapped: nn.Module | None = None
    step_losses: list[float] = field(default_factory=list)
    lr: float | None = None  # the last step's learning rate
    epoch_seconds: float = 0.0  # training time of the current epoch in this process

    @property
    def device(self) -> torch.device:
        return self.info.device

    last_saved_step: int = -1  # the step of the newest checkpoint on disk

    def checkpoint(self) -> None:
        if self.progress.step == self.last_saved_step:
            return  # re-writing it would briefly leave latest.json naming a missing directory
        self.last_saved_step = self.progress.step
        if self.info.is_main:
            save_checkpoint(self.run_dir / "checkpoints", step=self.progress.step,
                            model=self.model, keep=self.config.train.keep_checkpoints,
                            state={**self.progress.to_state(),
                                   "optimizer": self.optimizer.state_dict(),
                                   "rng": _rng_state(self.device)})


def _prepare(config: RunConfig, task: Task, info: distributed.DistInfo,
             run_dir: str | Path | None = None) -> _Run:
    """Build the model and optimizer and check the budgets: every refusal happens here, before
    a run directory exists. A fine-tuning run's model comes from its ``RUN_DIR/hf``."""
    t = config.train
    if t.max_minutes is not None and info.enabled:
        raise UsageError(f"train.max_minutes is for single-process runs (ranks would stop at "
                         f"different steps under DDP); use train.max_steps with "
                         f"{info.world_size} processes")
    if not task.metric:
        raise UsageError(f"task {task.name!r} names no metric")
    torch.manual_seed(t.seed)  # same initial weights on every process
    model = build_run_model(config, task, run_dir).to(info.device)
    torch.manual_seed(t.seed * 1000 + info.rank + 1)  # dropout differs per process
    optimizer = build_optimizer(model, config)
    batches_per_epoch = len(_batches(config, task, info, 0))
    if batches_per_epoch == 0:
        raise UsageError(f"task {task.name!r} has no training batches on this process")
    total_steps = t.schedule_steps or t.epochs * batches_per_epoch
    warmup = max(1, round(t.warmup_fraction * total_steps)) if t.warmup_fraction > 0 else 0
    return _Run(config=config, task=task, info=info, model=model, optimizer=optimizer,
                progress=_Progress(), total_steps=total_steps, warmup=warmup)


def _restore(run: _Run, path: Path) -> None:
    """Load a checkpoint into the model, optimizer, RNG and progress counters."""
    state = load_checkpoint(path, run.model)
    run.optimizer.load_state_dict(state.pop("optimizer"))
    _set_rng_state(state.pop("rng"), run.device)
    run.progress = _Progress(**state)
    run.last_saved_step = run.progress.step


def _resume_point(run_dir: Path) -> Path:
    """The newest intact checkpoint of ``run_dir``, saying which damaged ones were skipped."""
    path, problems = newest_intact_checkpoint(run_dir / "checkpoints")
    if path is None:
        why = f" ({'; '.join(problems)})" if problems else ""
        raise UsageError(f"nothing to resume in {str(run_dir)!r}: no intact checkpoint{why}; "
                         f"start a new run instead")
    for problem in problems:
        print(f"warning: {problem}; falling back to {path.name}", file=sys.stderr)
    return path


def train(config: RunConfig, *, task: Task | None = None, run_dir: str | Path | None = None,
          resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train ``config`` and evaluate the best weights on the test split.

    Args:
        config: the resolved run configuration (see :func:`attnkit.train.config.resolve_config`).
        task: the loaded task, if the caller already has it (else loaded from ``config.task``).
        run_dir: the run directory to use (default: a new one under ``config.out_dir``).
        resume: continue ``run_dir`` from its newest intact checkpoint. Changed settings are
            reported; changes that cannot resume (task, architecture) raise before anything
            is written.
        overwrite: replace an existing ``run_dir`` / named run (otherwise refused).

    Ctrl-C or SIGTERM stop at the next step boundary after saving a checkpoint
    (:class:`~attnkit.train.interrupts.TrainingInterrupted`).
    """
    from attnkit.tasks import get_task

    t = config.train
    info = distributed.setup(t.device)
    lock = None
    run: _Run | None = None
    try:
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        changes: dict[str, tuple[Any, Any]] = {}
        if resume:  # refuse changes before building anything from them
            if run_dir is None:
                raise UsageError("resume needs the run directory")
            if not (Path(run_dir) / "config.yaml").is_file():
                raise UsageError(f"nothing to resume: {str(run_dir)!r} is not a run directory "
                                 f"(no config.yaml)")
            saved = run_config_from_dict(load_yaml(Path(run_dir) / "config.yaml"))
            changes = check_resume(saved, config)
        task = task or get_task(config.task.name, **config.task.options)
        if config.model.family is None:
            config.model.family = default_family(task)  # type: ignore[assignment]
        run = _prepare(config, task, info, run_dir)
        if resume:
            run.run_dir = Path(str(run_dir))
            if info.is_main:
                lock = lock_run_dir(run.run_dir)
            _restore(run, _resume_point(run.run_dir))
        elif run_dir is not None:
            run.run_dir = Path(run_dir)
            if info.is_main:
                run.run_dir, lock = _claim(run.run_dir, config, task, overwrite)
        else:
            found = [""]
            if info.is_main:
                try:
                    path, lock = create_run_dir(config, task.name, overwrite=overwrite)
                    found = [str(path)]
                except (UsageError, OSError) as err:
                    if not info.enabled:
                        raise
                    found = [f"error: {err}"]  # the other ranks must not wait forever
            if info.enabled:
                torch.distributed.broadcast_object_list(found)  # from rank 0 (src's default)
            if found[0].startswith("error: "):
                raise UsageError(found[0].removeprefix("error: "))
            run.run_dir = Path(found[0])
        # The logger reads a resumed run's metrics.json: a damaged one stops us before the
        # config is rewritten.
        run.logger = RunLogger(run.run_dir, enabled=info.is_main, tensorboard=t.tensorboard)
        if info.is_main:
            write_config(run.run_dir, config)
        with StopRequests(announce=info.is_main) as stops:
            return _train(run, resumed=resume, changes=changes, stops=stops)
    finally:
        if run is not None and run.logger is not None:
            run.logger.close()
        if lock is not None:
            lock.release()
        distributed.cleanup(info)


def _claim(run_dir: Path, config: RunConfig, task: Task, overwrite: bool
           ) -> tuple[Path, Any]:
    """An explicit ``run_dir``: the same rules as a named run under ``out_dir``."""
    named = config.model_copy(update={"out_dir": str(run_dir.parent), "name": run_dir.name})
    return create_run_dir(named, task.name, overwrite=overwrite)


def _train(run: _Run, *, resumed: bool, changes: dict[str, tuple[Any, Any]],
           stops: StopRequests) -> TrainResult:
    t, progress = run.config.train, run.progress
    assert run.logger is not None
    logger = run.logger
    run.wrapped = run.model
    if run.info.enabled:
        run.wrapped = DistributedDataParallel(
            run.model, device_ids=[run.device] if run.device.type == "cuda" else None,
            find_unused_parameters=t.ddp_find_unused_parameters)
    logger.print(f"run directory: {run.run_dir}")
    if resumed:
        logger.print(f"resumed from step {progress.step} (epoch {progress.epoch + 1}, batch "
                     f"{progress.batch})")
        for key, (old, new) in changes.items():
            logger.print(f"changed setting: {key} {old!r} -> {new!r}")
    if logger.writer is not None:
        logger.print(f"TensorBoard: {logger.tensorboard_command()}")
    policy = _CheckpointPolicy(t.checkpoint_every, t.checkpoint_minutes)
    early = _EarlyStopping(run.task.metric, t.patience)
    stop = None
    while progress.epoch < t.epochs and not progress.stopped_early:
        if _budget_spent(t, progress.step, progress.train_seconds, None):
            stop = "budget"
            break
        stop = _train_epoch(run, policy, stops)
        if stop == "budget":
            break
        _end_of_epoch(run, early)
        run.checkpoint()
        policy.saved()
        if _stop_requested(stops, run.info):
            raise TrainingInterrupted(run.run_dir, progress.step, progress.epoch,
                                      stops.requested or "signal")
    if stop == "budget" and progress.batch:  # a budget stop inside an epoch
        run.checkpoint()
        _report_partial_epoch(run)
    return _final_test(run)


def _train_epoch(run: _Run, policy: _CheckpointPolicy, stops: StopRequests) -> str | None:
    """The rest of the current epoch, one optimizer step per batch.

    Returns ``"budget"`` when ``max_steps`` / ``max_minutes`` ran out before the epoch's last
    batch, None at the epoch's end; raises :class:`TrainingInterrupted` on a stop request."""
    config, t, progress, task = run.config, run.config.train, run.progress, run.task
    all_batches = _batches(config, task, run.info, progress.epoch)
    batches = all_batches[progress.batch:]
    started = time.perf_counter()
    assert run.wrapped is not None and run.logger is not None
    run.wrapped.train()
    bar = progress_bar(len(batches), f"epoch {progress.epoch + 1}/{t.epochs}",
                       enabled=t.progress and run.info.is_main)
    totals = dict(progress.epoch_stats)  # Python floats: float64 sums, as a checkpoint holds
    objective = objective_for(task)

    run.epoch_seconds = 0.0

    def sync_progress() -> None:
        nonlocal started
        progress.epoch_stats = dict(totals)
        spent = time.perf_counter() - started
        progress.train_seconds += spent
        run.epoch_seconds += spent
        started = time.perf_counter()

    try:
        for batch in _batch_iter(task, batches, run.device):
            loss_value, stats = _step(run, objective, batch)
            for k in _STAT_KEYS:
                totals[k] += float(stats[k])
            # the postfix first: the plain-line display prints at update()
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{run.lr:.2e}")
            bar.update(1)
            run.logger.scalars(progress.step, {"train/loss": loss_value, "train/lr": run.lr or 0.0})
            if progress.batch == len(all_batches):
                break  # the epoch's end: evaluation and a checkpoint follow
            if _stop_requested(stops, run.info):
                sync_progress()
                run.checkpoint()
                raise TrainingInterrupted(run.run_dir, progress.step, progress.epoch + 1,
                                          stops.requested or "signal")
            if _budget_spent(t, progress.step, progress.train_seconds, started):
                sync_progress()
                return "budget"
            if policy.due(progress.step):
                sync_progress()
                run.checkpoint()
                policy.saved()
    finally:
        bar.close()
    sync_progress()
    return None


def _stop_requested(stops: StopRequests, info: distributed.DistInfo) -> bool:
    """A signal reached this process (or, under DDP, any process: all stop at the same step)."""
    return distributed.sum_floats([float(stops.requested is not None)], info)[0] > 0


def _step(run: _Run, objective: Any, batch: Any) -> tuple[float, dict[str, Any]]:
    """One optimizer step at the scheduled learning rate; returns (loss, batch statistics)."""
    t, progress = run.config.train, run.progress
    assert run.wrapped is not None
    run.lr = lr = warmup_cosine(progress.step, total_steps=run.total_steps, peak_lr=t.lr,
                                warmup_steps=run.warmup, min_lr_ratio=t.min_lr_ratio)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with _autocast(run.device, t.precision):
        loss, stats = objective(run.wrapped, batch, run.task, t.label_smoothing)
        aux = collect_auxiliary_losses(run.model)
        total = loss + t.aux_loss_weight * aux if aux is not None else loss
    run.optimizer.zero_grad()
    total.backward()
    if t.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), t.grad_clip)
    run.optimizer.step()
    progress.step += 1
    progress.batch += 1
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        raise FloatingPointError(f"loss became {loss_value} at step {progress.step}; lower "
                                 f"train.lr or raise train.warmup_fraction")
    run.step_losses.append(loss_value)
    return loss_value, stats


def _epoch_train_metrics(run: _Run) -> tuple[dict[str, float], float]:
    """The epoch's training metrics over all processes, and how many examples they cover."""
    stats = run.progress.epoch_stats
    summed = distributed.sum_floats([stats[k] for k in _STAT_KEYS], run.info)
    totals = dict(zip(_STAT_KEYS, summed))
    return metrics_from_stats(totals, run.task.kind), totals["count"]


def _validate(run: _Run) -> dict[str, float]:
    """Validation metrics (evaluate() runs on the model's device, run.device)."""
    t = run.config.train
    val = evaluate(run.model, run.task.val, run.task, batch_size=t.eval_batch_size,
                   precision=t.precision)
    if run.task.metric not in val:
        raise ValueError(f"task metric {run.task.metric!r} is not among the validation "
                         f"metrics {sorted(val)}")
    return val


def _end_of_epoch(run: _Run, early: _EarlyStopping) -> None:
    """Statistics over all processes, validation, best weights, early stopping."""
    progress, task = run.progress, run.task
    assert run.logger is not None
    train_metrics, count = _epoch_train_metrics(run)
    val = _validate(run)
    seconds = run.epoch_seconds
    throughput = count / max(seconds, 1e-9)  # (a resumed epoch: over its resumed part)
    record = {"epoch": progress.epoch + 1, "step": progress.step, "train": train_metrics,
              "val": val, "lr": run.lr, "throughput": throughput, "seconds": seconds}
    run.logger.epoch(record)
    run.logger.scalars(progress.step, {f"val/{k}": v for k, v in val.items()})
    run.logger.scalars(progress.step, {"train/throughput": throughput,
                                       **{f"train/{k}_epoch": v
                                          for k, v in train_metrics.items()}})
    value = val[task.metric]
    best = early.update(progress, value, record)
    if best and run.info.is_main:
        (run.run_dir / "best").mkdir(exist_ok=True)
        save_weights(run.model, run.run_dir / "best" / "model.safetensors")
    run.logger.print(f"epoch {progress.epoch + 1}: train loss {train_metrics['loss']:.4f}, "
                     f"val {task.metric} {value:.4f}" + (" (best)" if best else "")
                     + (" - early stop" if progress.stopped_early else ""))
    progress.epoch += 1
    progress.batch = 0
    progress.epoch_stats = {k: 0.0 for k in _STAT_KEYS}


def _report_partial_epoch(run: _Run) -> None:
    """A budget ended the run inside an epoch: validate for the report, outside the history
    (the epoch continues exactly if the run is resumed with a larger budget)."""
    assert run.logger is not None
    val = _validate(run)
    progress = run.progress
    run.logger.update(stopped={"reason": "budget", "step": progress.step,
                               "epoch": progress.epoch + 1, "batch": progress.batch,
                               "val": val})
    run.logger.print(f"budget reached at step {progress.step} (epoch {progress.epoch + 1}, "
                     f"batch {progress.batch}): val {run.task.metric} "
                     f"{val[run.task.metric]:.4f}; raise train.max_steps / train.max_minutes "
                     f"and --resume {run.run_dir} to continue")


def _final_test(run: _Run) -> TrainResult:
    """The test split with the best weights (the current ones if no epoch ended)."""
    t, progress, info = run.config.train, run.progress, run.info
    assert run.logger is not None
    best_path = run.run_dir / "best" / "model.safetensors"
    if info.enabled:
        torch.distributed.barrier()
    if best_path.is_file():  # saved with the best record (none before an epoch ends)
        load_weights(run.model, best_path)
    test = evaluate(run.model, run.task.test, run.task, batch_size=t.eval_batch_size,
                    precision=t.precision)
    extra: dict[str, Any] = {}
    if info.enabled:
        checksum = sum(float(p.detach().double().sum()) for p in run.model.parameters())
        extra["ddp"] = {"world_size": info.world_size,
                        "param_checksums": distributed.all_gather_floats(checksum, info)}
    run.logger.update(best=progress.best_record, test=test, steps=progress.step,
                      stopped_early=progress.stopped_early,
                      train_seconds=progress.train_seconds, **extra)
    run.logger.print(f"test {run.task.metric}: {test[run.task.metric]:.4f} "
                     f"({progress.train_seconds:.1f} s of training)")
    return TrainResult(run_dir=run.run_dir, test=test, best=progress.best_record,
                       history=list(run.logger.metrics["history"]),
                       step_losses=run.step_losses, steps=progress.step,
                       stopped_early=progress.stopped_early,
                       train_seconds=progress.train_seconds)


def _batch_iter(task: Task, batches: list[list[int]], device: torch.device) -> Iterator[Any]:
    for batch in make_loader(task.train, batches, pad_id=task.pad_id):
        yield batch.to(device)
