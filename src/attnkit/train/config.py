"""Run configuration: typed dataclasses, YAML files and ``--set section.key=value`` overrides.

A run is described by a :class:`RunConfig` with three sections::

    task:  {name: digits, options: {}}
    model: {family: vit, d_model: 64, attention: gated, ...}   # fields of ModelConfig
    train: {epochs: 40, lr: 0.003, ...}                          # fields of TrainConfig
    preset: vit_tiny_digits                                      # numbers the model starts from

Resolution order: preset numbers, then the YAML file's ``model`` keys, then command-line
overrides. The fully resolved config is written to ``RUN_DIR/config.yaml``; resuming and
:func:`attnkit.train.load_run` read it back without re-resolving anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attnkit.models.config import ModelConfig
from attnkit.models.presets import DEFAULT_PRESET, get_preset

if typing.TYPE_CHECKING:
    from attnkit.tasks.base import Task

__all__ = ["RunConfig", "TaskConfig", "TrainConfig", "apply_overrides", "load_yaml",
           "parse_override", "resolve_config", "resolve_for_task", "run_config_from_dict"]


@dataclass
class TaskConfig:
    """Which task to train on."""

    name: str = "digits"  # a registered task (attnkit.tasks.list_tasks())
    options: dict[str, Any] = field(default_factory=dict)  # keyword options of the task loader


@dataclass
class TrainConfig:
    """Optimization, evaluation and bookkeeping."""

    epochs: int = 40  # passes over the training set
    batch_size: int = 64  # examples per optimizer step (per process under DDP)
    eval_batch_size: int = 256  # examples per evaluation forward pass
    lr: float = 3e-3  # peak learning rate (after warmup)
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    warmup_fraction: float = 0.05  # share of all steps spent in linear warmup
    weight_decay: float = 0.05  # AdamW decoupled weight decay (not on biases / norms / embeddings)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW moment decay rates
    grad_clip: float | None = 1.0  # clip the global gradient norm to this (None: no clipping)
    label_smoothing: float = 0.0  # cross-entropy label smoothing (Szegedy et al., 2016)
    aux_loss_weight: float = 1.0  # multiplies the attention layers' auxiliary losses
    patience: int | None = None  # early stop after this many evaluations without improvement
    seed: int = 0  # seeds model init, dropout and data order
    device: str = "auto"  # "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "fp32"
    max_steps: int | None = None  # stop after this many optimizer steps (budgets, tests)
    max_minutes: float | None = None  # stop once training took this long (then validate, test)
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: epoch ends)
    keep_checkpoints: int = 2  # how many recent checkpoints to keep (the best is kept apart)
    ddp_find_unused_parameters: bool = False  # DDP: allow parameters without gradient in a step
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    progress: bool = True  # tqdm progress bars
    tensorboard: bool = True  # TensorBoard scalars in RUN_DIR/tensorboard


@dataclass
class RunConfig:
    """Everything that defines a run."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None  # model preset the numbers started from (None: family default)
    out_dir: str = "runs"  # parent directory of run directories
    name: str | None = None  # run directory name (None: task-family-time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS: dict[str, type] = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig}
_TOP_LEVEL = ("preset", "out_dir", "name")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (["train", "lr"], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. "
                         f"train.lr=1e-3")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ValueError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({err})") from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``a.b.c=value`` into the nested dict ``raw`` (a copy is returned)."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file {str(p)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping with sections task, "
                         f"model, train; got {type(data).__name__}")
    return data


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a (string-free) type annotation, converting int -> float."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} has the wrong "
                         f"type ({annotation})")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(annotation) or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _fill(cls: type, base: Any, values: dict[str, Any], section: str) -> Any:
    """A ``cls`` instance: ``base``'s fields updated with ``values`` (type-checked)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {section} option(s) {unknown}; valid: {names}")
    updates = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return dataclasses.replace(base, **updates)


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise ValueError(f"config section {name!r} must be a mapping, got {value!r}")
    return value


def run_config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """A RunConfig from a fully resolved dict (e.g. RUN_DIR/config.yaml); no preset applied."""
    _check_top_level(raw)
    return RunConfig(task=_fill(TaskConfig, TaskConfig(), _section(raw, "task"), "task"),
                     model=_fill(ModelConfig, ModelConfig(), _section(raw, "model"), "model"),
                     train=_fill(TrainConfig, TrainConfig(), _section(raw, "train"), "train"),
                     **{k: raw[k] for k in _TOP_LEVEL if k in raw})


def _check_top_level(raw: dict[str, Any]) -> None:
    unknown = sorted(set(raw) - set(_SECTIONS) - set(_TOP_LEVEL))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; valid: "
                         f"{[*_SECTIONS, *_TOP_LEVEL]}")


def resolve_config(raw: dict[str, Any], *, family: str | None = None,
                   preset_hints: dict[str, str] | None = None) -> RunConfig:
    """Resolve a user config: the preset's numbers, then the given ``model`` keys.

    ``family`` is the family the task gets when the config names none; ``preset_hints`` are a
    task's suggested presets per family (``Task.extra["presets"]``).
    """
    _check_top_level(raw)
    model_raw = dict(_section(raw, "model"))
    family = model_raw.get("family") or family
    preset = raw.get("preset")
    if preset is None and family is not None:
        preset = (preset_hints or {}).get(family) or DEFAULT_PRESET.get(family)
    base = get_preset(preset) if preset else ModelConfig()
    model = _fill(ModelConfig, base, model_raw, "model")
    if model.family is None:
        model.family = family
    return RunConfig(task=_fill(TaskConfig, TaskConfig(), _section(raw, "task"), "task"),
                     model=model,
                     train=_fill(TrainConfig, TrainConfig(), _section(raw, "train"), "train"),
                     preset=preset, out_dir=raw.get("out_dir", "runs"), name=raw.get("name"))


def resolve_for_task(raw: dict[str, Any]) -> tuple[RunConfig, Task]:
    """Load the task ``raw`` names, then resolve ``raw`` with the task's family and presets.

    Returns ``(config, task)``; the family defaults from the task's modality and the preset from
    the task's suggestions (``task.extra["presets"]``), as ``attnkit train`` does.
    """
    from attnkit.models import default_family
    from attnkit.tasks import get_task

    task_section = raw.get("task") or {}
    if not isinstance(task_section, dict):
        raise ValueError(f"config section 'task' must be a mapping, got {task_section!r}")
    task = get_task(task_section.get("name", "digits"), **task_section.get("options", {}))
    config = resolve_config(raw, family=default_family(task),
                            preset_hints=task.extra.get("presets"))
    return config, task
