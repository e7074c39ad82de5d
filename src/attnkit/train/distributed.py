"""Data parallel training under torchrun (DDP): gloo on CPU, NCCL on CUDA.

A plain ``python`` / ``attnkit train`` run is single-process and needs none of this; under
``torchrun --nproc_per_node N`` (which sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``) each
process trains on its shard of every epoch and DDP averages the gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from attnkit.errors import UsageError

__all__ = ["DistInfo", "all_gather_floats", "cleanup", "pick_device", "setup", "sum_floats"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits."""

    rank: int  # global rank (0 writes checkpoints and logs)
    world_size: int  # number of processes
    local_rank: int  # rank on this machine (selects the GPU)
    device: torch.device  # device this process computes on

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's GPU) when available, else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() \
            else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"device {name!r} is not a device torch knows; use auto, cpu, cuda, "
                         f"cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} was asked for but CUDA is not available; use "
                         f"--set train.device=cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def setup(device_name: str) -> DistInfo:
    """Join the process group if launched by torchrun; otherwise a single-process DistInfo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(0, 1, 0, pick_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank, device)


def sum_floats(values: list[float], info: DistInfo) -> list[float]:
    """Each value summed over processes, in float64 (the values as given when single-process).
    The tensor lives on this process's device: NCCL reduces CUDA tensors only."""
    if not info.enabled:
        return list(values)
    summed = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return [float(v) for v in summed.tolist()]


def all_gather_floats(value: float, info: DistInfo) -> list[float]:
    """Every process's ``value``, in rank order."""
    if not info.enabled:
        return [value]
    out = [torch.zeros(1, dtype=torch.float64, device=info.device)
           for _ in range(info.world_size)]
    dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=info.device))
    return [float(t.item()) for t in out]


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
