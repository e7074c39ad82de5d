"""Training: one loop for every task kind, atomic safetensors checkpoints, exact resume,
TensorBoard and metrics JSON, DDP under torchrun; ``load_run`` to use a trained model."""

from attnkit.train.config import RunConfig, TaskConfig, TrainConfig, resolve_config
from attnkit.train.loop import TrainResult, evaluate, train
from attnkit.train.run import LoadedRun, load_run

__all__ = ["LoadedRun", "RunConfig", "TaskConfig", "TrainConfig", "TrainResult", "evaluate",
           "load_run", "resolve_config", "train"]
