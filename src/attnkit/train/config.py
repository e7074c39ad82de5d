"""Run configuration: one typed schema (pydantic), YAML files and ``--set section.key=value``.

A run is described by a :class:`RunConfig` with three sections::

    task:  {name: digits, options: {}}
    model: {family: vit, d_model: 128, attention: gated, ...}   # fields of ModelConfig
    train: {epochs: 40, lr: 0.003, ...}                          # fields of TrainConfig
    preset: vit_tiny_digits                                      # numbers the model starts from

Resolution order: preset numbers, then the YAML file's ``model`` keys, then command-line
overrides. Every field's type, range and choices are checked (pydantic) before anything is
built or written; a bad value raises :class:`ConfigError` naming the field, the value, what is
allowed and the fix. The fully resolved config is written to ``RUN_DIR/config.yaml``; resuming
and :func:`attnkit.train.load_run` read it back without re-resolving anything.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from attnkit.errors import UsageError
from attnkit.models.config import ModelConfig
from attnkit.models.presets import DEFAULT_PRESET, get_preset

if typing.TYPE_CHECKING:
    from attnkit.tasks.base import Task

__all__ = ["ConfigError", "Precision", "RunConfig", "TaskConfig", "TrainConfig",
           "apply_overrides", "config_changes", "load_yaml", "parse_override", "resolve_config",
           "resolve_for_task", "run_config_from_dict"]


class ConfigError(UsageError):
    """A config value or key that the schema refuses (one line: field, value, allowed, fix)."""


class Precision(str, enum.Enum):
    """Numeric precision of the training forward pass."""

    AUTO = "auto"  # bf16 autocast on CUDA, fp32 on CPU
    BF16 = "bf16"
    FP32 = "fp32"

    # Print and format as the bare value (like enum.StrEnum, which Python 3.10 lacks).
    __str__ = str.__str__
    __format__ = str.__format__  # type: ignore[assignment]


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_STRICT = ConfigDict(extra="forbid", validate_assignment=True)

Unit = Annotated[float, Field(ge=0.0, le=1.0)]
BelowOne = Annotated[float, Field(ge=0.0, lt=1.0)]


class TaskConfig(BaseModel):
    """Which task to train on."""

    model_config = _STRICT

    name: Annotated[str, Field(min_length=1)] = "digits"  # a registered task (list_tasks())
    options: dict[str, Any] = Field(default_factory=dict)  # keyword options of the task loader


class TrainConfig(BaseModel):
    """Optimization, evaluation and bookkeeping."""

    model_config = _STRICT

    epochs: Annotated[int, Field(ge=1)] = 40  # passes over the training set
    batch_size: Annotated[int, Field(ge=1)] = 64  # examples per optimizer step (per process)
    eval_batch_size: Annotated[int, Field(ge=1)] = 256  # examples per evaluation forward pass
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 3e-3  # peak learning rate (after warmup)
    min_lr_ratio: Unit = 0.0  # cosine decays to lr * min_lr_ratio
    warmup_fraction: BelowOne = 0.05  # share of the scheduled steps spent in linear warmup
    # AdamW decoupled weight decay; never on embeddings, norms or biases (see build_optimizer)
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05
    betas: tuple[BelowOne, BelowOne] = (0.9, 0.999)  # AdamW moment decay rates
    grad_clip: Annotated[float, Field(gt=0.0)] | None = 1.0  # global grad-norm clip (None: off)
    label_smoothing: BelowOne = 0.0  # cross-entropy label smoothing (Szegedy et al., 2016)
    aux_loss_weight: Annotated[float, Field(ge=0.0)] = 1.0  # times the layers' auxiliary losses
    patience: Annotated[int, Field(ge=1)] | None = None  # early stop after N evals, no progress
    seed: Annotated[int, Field(ge=0)] = 0  # seeds model init, dropout and data order
    device: str = "auto"  # "auto" (CUDA if present), "cpu", "cuda", "cuda:1", "mps"
    precision: Precision = Precision.AUTO  # auto: bf16 autocast on CUDA, fp32 on CPU
    # the warmup + cosine schedule spans this many steps (None: epochs x batches per epoch)
    schedule_steps: Annotated[int, Field(ge=1)] | None = None
    # Budgets: stop after this many optimizer steps / minutes of training. They do not change
    # the learning-rate schedule, so raising one and resuming continues exactly.
    max_steps: Annotated[int, Field(ge=1)] | None = None
    max_minutes: Annotated[float, Field(gt=0.0)] | None = None
    checkpoint_every: Annotated[int, Field(ge=0)] = 0  # also checkpoint every N steps (0: off)
    # also checkpoint once this many minutes passed since the last checkpoint (0: off)
    checkpoint_minutes: Annotated[float, Field(ge=0.0)] = 5.0
    keep_checkpoints: Annotated[int, Field(ge=1)] = 2  # recent checkpoints kept (best apart)
    ddp_find_unused_parameters: bool = False  # DDP: allow parameters without gradient in a step
    num_threads: Annotated[int, Field(ge=1)] | None = None  # torch CPU threads (None: default)
    progress: bool = True  # progress bars (plain periodic lines when stdout is not a terminal)
    tensorboard: bool = True  # TensorBoard scalars in RUN_DIR/tensorboard

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
        return value


class RunConfig(BaseModel):
    """Everything that defines a run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    preset: str | None = None  # model preset the numbers started from (None: family default)
    out_dir: Annotated[str, Field(min_length=1)] = "runs"  # parent of run directories
    # run directory name (None: task-family-time)
    name: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (value in (".", "..") or "/" in value or "\\" in value):
            raise ValueError("must be a plain directory name (no '/'); use out_dir for the parent")
        return value

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready values (enums as their strings, tuples as lists)."""
        return self.model_dump(mode="json")


_SECTIONS: dict[str, list[str]] = {
    "task": list(TaskConfig.model_fields),
    "model": ModelConfig.field_names(),
    "train": list(TrainConfig.model_fields),
}
_TOP_LEVEL = ("preset", "out_dir", "name")


def _unknown_key_error(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"unknown {where} option {key!r}; {hint}valid: {', '.join(valid)}")


def _check_keys(raw: dict[str, Any]) -> None:
    """Unknown keys, with a "did you mean" suggestion (before the schema sees them)."""
    for key in raw:
        if key not in _SECTIONS and key not in _TOP_LEVEL:
            raise _unknown_key_error(str(key), [*_SECTIONS, *_TOP_LEVEL], "config")
    for section, valid in _SECTIONS.items():
        values = raw.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping of options, got "
                              f"{values!r}; e.g. --set {section}.{valid[0]}=...")
        for key in values:
            if key not in valid:
                raise _unknown_key_error(str(key), valid, section)


def _default_of(section: str, key: str) -> Any:
    if section == "train" and key in TrainConfig.model_fields:
        return TrainConfig.model_fields[key].get_default(call_default_factory=True)
    if section == "model":
        fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
        if key in fields and fields[key].default is not dataclasses.MISSING:
            return fields[key].default
    return None


def _one_line(err: ValidationError) -> ConfigError:
    """The first schema error as one line: field, value, what is allowed, the fix."""
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"] if not isinstance(part, int)]
    field = ".".join(loc) or "config"
    value = first.get("input")
    message = first["msg"].removeprefix("Value error, ")
    fix = ""
    if len(loc) == 2:
        default = _default_of(loc[0], loc[1])
        example = default if default is not None else "..."
        if isinstance(example, enum.Enum):
            example = example.value
        elif isinstance(example, tuple | list) or example is None:
            example = json.dumps(list(example) if example is not None else None)
        fix = f"; fix it in the config or with --set {field}={example}"
        if default is not None:
            fix += " (the default)"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    message = message[:1].lower() + message[1:]
    return ConfigError(f"{field}={value!r} is not allowed: {message}{fix}{more}")


def _validate(data: dict[str, Any]) -> RunConfig:
    _check_keys(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise _one_line(err) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (["train", "lr"], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. "
                          f"train.lr=1e-3")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key; e.g. train.lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML "
                          f"({str(err).splitlines()[0]})") from None
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
                raise ConfigError(f"override {text!r}: {part!r} is not a section; sections "
                                  f"are {', '.join(_SECTIONS)}")
            node = child
        node[path[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with errors that name the file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a directory; give a YAML file (a run's "
                          f"config is {str(p / 'config.yaml')!r})")
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {first}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not a text (UTF-8) file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping with sections task, "
                          f"model, train; got {type(data).__name__}")
    return data


def run_config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """A RunConfig from a fully resolved dict (e.g. RUN_DIR/config.yaml); no preset applied."""
    return _validate(raw)


def resolve_config(raw: dict[str, Any], *, family: str | None = None,
                   preset_hints: dict[str, str] | None = None) -> RunConfig:
    """Resolve a user config: the preset's numbers, then the given ``model`` keys.

    ``family`` is the family the task gets when the config names none; ``preset_hints`` are a
    task's suggested presets per family (``Task.extra["presets"]``).
    """
    _check_keys(raw)
    model_raw = dict(raw.get("model") or {})
    family = model_raw.get("family") or family
    preset = raw.get("preset")
    if preset is None and family is not None:
        preset = (preset_hints or {}).get(family) or DEFAULT_PRESET.get(family)
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"preset={preset!r} is not allowed: it must be a preset name; see "
                          f"'attnkit list presets'")
    base = dataclasses.asdict(get_preset(preset)) if preset else {}
    model = {**base, **model_raw}
    if model.get("family") is None:
        model["family"] = family
    return _validate({**raw, "model": model, "preset": preset})


def resolve_for_task(raw: dict[str, Any]) -> tuple[RunConfig, Task]:
    """Load the task ``raw`` names, then resolve ``raw`` with the task's family and presets.

    Returns ``(config, task)``; the family defaults from the task's modality, the preset from
    the task's suggestions (``task.extra["presets"]``) and training settings the config does not
    set from ``task.extra["train"]`` (digits has tuned ones), as ``attnkit train`` does.
    """
    from attnkit.models import default_family
    from attnkit.tasks import get_task

    _check_keys(raw)
    task_config = _validate({"task": raw.get("task") or {}}).task
    task = get_task(task_config.name, **task_config.options)
    suggested = task.extra.get("train") or {}
    if suggested:
        raw = {**raw, "train": {**suggested, **(raw.get("train") or {})}}
    config = resolve_config(raw, family=default_family(task),
                            preset_hints=task.extra.get("presets"))
    return config, task


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in _SECTIONS and not prefix:
            out.update(_flatten(value, f"{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{"train.epochs": (old, new), ...}`` for every setting that differs."""
    a, b = _flatten(old.to_dict()), _flatten(new.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
