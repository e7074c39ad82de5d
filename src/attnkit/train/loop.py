"""The training loop: one function, :func:`train`, for every task kind, family and attention kind.

Per optimizer step: AdamW (decoupled weight decay, Loshchilov & Hutter, 2019) at the
warmup + cosine learning rate, loss = task objective (with label smoothing) + the attention
layers' auxiliary losses, gradient clipping, bf16 autocast on CUDA. Per epoch: validation,
early stopping on the task's metric, best weights, an atomic checkpoint. At the end: the test
split with the best weights. Resuming from a checkpoint continues bit-for-bit (same data order,
dropout RNG, optimizer state and schedule).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from attnkit.layers import collect_auxiliary_losses
from attnkit.models import default_family
from attnkit.train import distributed
from attnkit.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_weights,
)
from attnkit.train.config import RunConfig, TrainConfig
from attnkit.train.data import epoch_batches, iterate, make_loader
from attnkit.train.logging import RunLogger
from attnkit.train.objectives import metrics_from_stats, objective_for
from attnkit.train.run import build_run_model
from attnkit.train.schedule import warmup_cosine

if TYPE_CHECKING:
    from attnkit.tasks.base import Task

__all__ = ["TrainResult", "build_optimizer", "evaluate", "metric_is_minimized", "train"]

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


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices, not on biases, norms, embeddings or class tokens."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.dim() < 2 or any(s in name for s in ("embedding", "positions", "cls_token"))
        (no_decay if skip else decay).append(param)
    t = config.train
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr, betas=(t.betas[0], t.betas[1]))


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"train.precision must be auto, bf16 or fp32, got {precision!r}")
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


def _new_run_dir(config: RunConfig, task: Task, info: distributed.DistInfo) -> Path:
    if info.is_main:
        name = config.name or (f"{task.name}-{config.model.family}-"
                               f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}")
        run_dir = Path(config.out_dir) / name
        suffix = 1
        while config.name is None and run_dir.exists():
            run_dir = Path(config.out_dir) / f"{name}-{suffix}"
            suffix += 1
        run_dir.mkdir(parents=True, exist_ok=True)
        found = [str(run_dir)]
    else:
        found = [""]
    if info.enabled:
        torch.distributed.broadcast_object_list(found, src=0)
    return Path(found[0])


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


def _write_config(run_dir: Path, config: RunConfig) -> None:
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(text)
    tmp.replace(run_dir / "config.yaml")


def train(config: RunConfig, *, task: Task | None = None, run_dir: str | Path | None = None,
          resume: bool = False) -> TrainResult:
    """Train ``config`` and evaluate the best weights on the test split.

    Args:
        config: the resolved run configuration (see :func:`attnkit.train.config.resolve_config`).
        task: the loaded task, if the caller already has it (else loaded from ``config.task``).
        run_dir: the run directory to use (default: a new one under ``config.out_dir``).
        resume: continue from ``run_dir``'s latest checkpoint.
    """
    from attnkit.tasks import get_task

    t = config.train
    info = distributed.setup(t.device)
    try:
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        task = task or get_task(config.task.name, **config.task.options)
        if config.model.family is None:
            config.model.family = default_family(task)
        if resume:
            if run_dir is None:
                raise ValueError("resume needs the run directory")
            run_dir = Path(run_dir)
            if latest_checkpoint(run_dir / "checkpoints") is None:
                raise FileNotFoundError(f"nothing to resume: {str(run_dir)!r} has no checkpoint "
                                        f"(checkpoints/latest.json)")
        elif run_dir is None:
            run_dir = _new_run_dir(config, task, info)
        run_dir = Path(run_dir)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_config(run_dir, config)
        return _train(config, task, run_dir, info, resume)
    finally:
        distributed.cleanup(info)


def _train(config: RunConfig, task: Task, run_dir: Path, info: distributed.DistInfo,
           resume: bool) -> TrainResult:
    t = config.train
    device = info.device
    torch.manual_seed(t.seed)  # same initial weights on every process
    model = build_run_model(config, task, run_dir).to(device)
    torch.manual_seed(t.seed * 1000 + info.rank + 1)  # dropout differs per process
    optimizer = build_optimizer(model, config)
    progress = _Progress()
    ckpt_root = run_dir / "checkpoints"
    if resume:
        path = latest_checkpoint(ckpt_root)
        assert path is not None
        state = load_checkpoint(path, model)
        optimizer.load_state_dict(state.pop("optimizer"))
        _set_rng_state(state.pop("rng"), device)
        progress = _Progress(**state)
    objective = objective_for(task)
    if t.max_minutes is not None and (t.max_minutes <= 0 or info.enabled):
        raise ValueError(f"train.max_minutes must be > 0 and is for single-process runs (ranks "
                         f"would stop at different steps under DDP; use train.max_steps there), "
                         f"got {t.max_minutes} with {info.world_size} process(es)")
    if t.label_smoothing < 0 or t.label_smoothing >= 1:
        raise ValueError(f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    batches_per_epoch = len(_batches(config, task, info, 0))
    total_steps = t.epochs * batches_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    warmup = max(1, round(t.warmup_fraction * total_steps)) if t.warmup_fraction > 0 else 0
    logger = RunLogger(run_dir, enabled=info.is_main, tensorboard=t.tensorboard)
    if not task.metric:
        raise ValueError(f"task {task.name!r} names no metric")
    wrapped: nn.Module = model
    if info.enabled:
        wrapped = DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=t.ddp_find_unused_parameters)
    logger.print(f"run directory: {run_dir}")
    if logger.writer is not None:
        logger.print(f"TensorBoard: {logger.tensorboard_command()}")
    step_losses: list[float] = []
    lr: float | None = None

    def checkpoint() -> None:
        if info.is_main:
            save_checkpoint(ckpt_root, step=progress.step, model=model, keep=t.keep_checkpoints,
                            state={**progress.to_state(), "optimizer": optimizer.state_dict(),
                                   "rng": _rng_state(device)})

    try:
        while progress.epoch < t.epochs and not progress.stopped_early:
            if _budget_spent(t, progress.step, progress.train_seconds, None):
                break
            batches = _batches(config, task, info, progress.epoch)[progress.batch:]
            started = time.perf_counter()
            wrapped.train()
            bar = tqdm(total=len(batches), desc=f"epoch {progress.epoch + 1}/{t.epochs}",
                       leave=False, disable=not (t.progress and info.is_main))
            epoch_totals = {k: torch.tensor(v, dtype=torch.float64)
                            for k, v in progress.epoch_stats.items()}
            for batch in _batch_iter(task, batches, device):
                lr = warmup_cosine(progress.step, total_steps=total_steps, peak_lr=t.lr,
                                   warmup_steps=warmup, min_lr_ratio=t.min_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with _autocast(device, t.precision):
                    loss, stats = objective(wrapped, batch, task, t.label_smoothing)
                    aux = collect_auxiliary_losses(model)
                    total = loss + t.aux_loss_weight * aux if aux is not None else loss
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if t.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
                progress.step += 1
                progress.batch += 1
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss became {loss_value} at step {progress.step}; "
                                             f"lower train.lr or raise train.warmup_fraction")
                step_losses.append(loss_value)
                for k in _STAT_KEYS:
                    epoch_totals[k] += float(stats[k])
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                logger.scalars(progress.step, {"train/loss": loss_value, "train/lr": lr})
                done = _budget_spent(t, progress.step, progress.train_seconds, started)
                if t.checkpoint_every and progress.step % t.checkpoint_every == 0 and not done:
                    progress.epoch_stats = {k: float(v) for k, v in epoch_totals.items()}
                    progress.train_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    checkpoint()
                if done:
                    break
            bar.close()
            seconds = time.perf_counter() - started
            progress.train_seconds += seconds
            # Epoch end: statistics over all processes, validation, early stopping, checkpoint.
            summed = distributed.all_reduce_sum(
                torch.tensor([float(epoch_totals[k]) for k in _STAT_KEYS], dtype=torch.float64,
                             device=device), info).cpu()
            train_metrics = metrics_from_stats(dict(zip(_STAT_KEYS, summed.tolist(),
                                                        strict=True)), task.kind)
            val = evaluate(model, task.val, task, batch_size=t.eval_batch_size, device=device,
                           precision=t.precision)
            if task.metric not in val:
                raise ValueError(f"task metric {task.metric!r} is not among the validation "
                                 f"metrics {sorted(val)}")
            throughput = float(summed[2]) / max(seconds, 1e-9)
            record = {"epoch": progress.epoch + 1, "step": progress.step,
                      "train": train_metrics, "val": val, "lr": lr,
                      "throughput": throughput, "seconds": seconds}
            logger.epoch(record)
            logger.scalars(progress.step, {f"val/{k}": v for k, v in val.items()})
            logger.scalars(progress.step, {"train/throughput": throughput,
                                           **{f"train/{k}_epoch": v
                                              for k, v in train_metrics.items()}})
            value = val[task.metric]
            if _improved(value, progress.best, task.metric):
                progress.best, progress.best_record, progress.bad_evals = value, record, 0
                if info.is_main:
                    (run_dir / "best").mkdir(exist_ok=True)
                    save_weights(model, run_dir / "best" / "model.safetensors")
            else:
                progress.bad_evals += 1
                if t.patience is not None and progress.bad_evals >= t.patience:
                    progress.stopped_early = True
            logger.print(f"epoch {progress.epoch + 1}: train loss {train_metrics['loss']:.4f}, "
                         f"val {task.metric} {value:.4f}"
                         + (" (best)" if progress.bad_evals == 0 else "")
                         + (" - early stop" if progress.stopped_early else ""))
            progress.epoch += 1
            progress.batch = 0
            progress.epoch_stats = {k: 0.0 for k in _STAT_KEYS}
            checkpoint()
        # Test with the best weights.
        best_path = run_dir / "best" / "model.safetensors"
        if info.enabled:
            torch.distributed.barrier()
        if best_path.is_file():
            from attnkit.train.checkpoint import load_weights

            load_weights(model, best_path)
        test = evaluate(model, task.test, task, batch_size=t.eval_batch_size, device=device,
                        precision=t.precision)
        extra: dict[str, Any] = {}
        if info.enabled:
            checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
            extra["ddp"] = {"world_size": info.world_size,
                            "param_checksums": distributed.all_gather_floats(checksum, info)}
        logger.update(best=progress.best_record, test=test, steps=progress.step,
                      stopped_early=progress.stopped_early,
                      train_seconds=progress.train_seconds, **extra)
        logger.print(f"test {task.metric}: {test.get(task.metric, float('nan')):.4f} "
                     f"({progress.train_seconds:.1f} s of training)")
        return TrainResult(run_dir=run_dir, test=test, best=progress.best_record,
                           history=list(logger.metrics["history"]), step_losses=step_losses,
                           steps=progress.step, stopped_early=progress.stopped_early,
                           train_seconds=progress.train_seconds)
    finally:
        logger.close()


def _batch_iter(task: Task, batches: list[list[int]], device: torch.device) -> Iterator[Any]:
    for batch in make_loader(task.train, batches, pad_id=task.pad_id):
        yield batch.to(device)
