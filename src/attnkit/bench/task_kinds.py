"""``attnkit bench task-kinds``: train one model per attention kind on a task and compare them.

Every kind gets the same run configuration (task, family, preset, optimizer, epochs, seed); only
``model.attention`` changes. For each trained model it records the test accuracy, the parameter
count and the training time, then evaluates the best weights on the test split as input noise
grows (:func:`attnkit.tasks.noise.task_robustness`: Gaussian noise for images and audio
features, random token replacement for text), with the same noise draws for every kind.

Outputs in ``--out``: ``task_kinds.csv`` (one row per kind), ``task_kinds.md`` (the table),
``robustness.png`` (accuracy against noise level, one line per kind), ``task_kinds.json`` (all
of it, with each run directory), and ``runs/`` with the run directories themselves. A kind that
cannot train on the task (e.g. a refusal of padding masks) is kept as a row with its error.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attnkit.bench.harness import distinct_colours, write_csv
from attnkit.layers import list_attention_kinds

if TYPE_CHECKING:
    from attnkit.tasks import Task
    from attnkit.train.config import RunConfig

__all__ = ["KindResult", "compare_kinds", "register"]

#: Noise levels evaluated by default: fractions of tokens replaced for token tasks, the standard
#: deviation of added Gaussian noise (inputs scaled to about [0, 1]) for images and audio.
DEFAULT_LEVELS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass
class KindResult:
    """One attention kind's run on the task."""

    kind: str
    test_accuracy: float = math.nan  # best validation weights on the test split
    best_val: float = math.nan  # the best value of the task's validation metric
    parameters: int = 0  # trainable parameters of the whole model
    train_seconds: float = math.nan  # time inside training epochs
    steps: int = 0
    robustness: list[float] = field(default_factory=list)  # accuracy at each noise level
    run_dir: str = ""
    error: str = ""  # why the kind could not be trained or evaluated

    def row(self, levels: Sequence[float]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "test_accuracy": self.test_accuracy, "best_val": self.best_val,
            "parameters": self.parameters, "train_seconds": self.train_seconds,
            "steps": self.steps, "noise_mean_accuracy": _mean(self.robustness)}
        for level, acc in zip(levels, self.robustness or [math.nan] * len(levels)):
            out[f"acc@{level:g}"] = acc
        out.update(run_dir=self.run_dir, error=self.error)
        return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _predictor(model: torch.nn.Module, device: torch.device
               ) -> Callable[[Tensor, Tensor | None], Tensor]:
    """``(inputs, lengths) -> predicted labels`` for the noise curve."""

    @torch.no_grad()
    def predict(inputs: Tensor, lengths: Tensor | None) -> Tensor:
        logits = model(inputs.to(device), None if lengths is None else lengths.to(device))
        return logits.argmax(-1)

    return predict


def train_kind(kind: str, raw: dict[str, Any], levels: Sequence[float], *,
               noise_examples: int | None, noise_seed: int, task: Task | None = None
               ) -> KindResult:
    """Train ``raw`` with every layer's attention set to ``kind``, then score it.

    ``task``: the task ``raw`` names, already loaded (a suite that trains many kinds on one
    generated task loads it once); None loads it from ``raw``.
    """
    from attnkit.models import default_family
    from attnkit.tasks.noise import task_robustness
    from attnkit.train.config import apply_overrides, resolve_config, resolve_for_task
    from attnkit.train.distributed import pick_device
    from attnkit.train.loop import train

    result = KindResult(kind=kind)
    try:
        kind_raw = apply_overrides(raw, [f"model.attention={kind}"])
        preloaded = task is not None
        if task is None:
            config, task = resolve_for_task(kind_raw)
        else:
            config = resolve_config(kind_raw, family=default_family(task),
                                    preset_hints=task.extra.get("presets"))
        config.name = kind
        run = train(config, task=task)
        model = _best_model(run.run_dir, config, task if preloaded else None)
        device = pick_device(config.train.device)  # where train() ran
        model.to(device)
        result.run_dir = str(run.run_dir)
        result.test_accuracy = float(run.test.get("accuracy", math.nan))
        result.best_val = float((run.best or {}).get(task.metric, math.nan))
        result.parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result.train_seconds, result.steps = run.train_seconds, run.steps
        if levels:
            curve = task_robustness(_predictor(model, device), task, levels, noise_seed,
                                    max_examples=noise_examples)
            result.robustness = curve.accuracy
    except (ValueError, RuntimeError, NotImplementedError, TypeError) as err:
        result.error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        traceback.print_exc()
    return result


def _best_model(run_dir: Path, config: RunConfig, task: Task | None) -> torch.nn.Module:
    """The run's best validation weights; with ``task`` given, built on it (no reload)."""
    from attnkit.models import build_model
    from attnkit.train.checkpoint import load_weights
    from attnkit.train.run import load_run

    if task is None:
        return load_run(run_dir).model
    model = build_model(config.model, task)
    load_weights(model, run_dir / "best" / "model.safetensors")
    return model


def compare_kinds(raw: dict[str, Any], kinds: Sequence[str], *, out_dir: Path,
                  levels: Sequence[float] = DEFAULT_LEVELS, noise_examples: int | None = 2000,
                  noise_seed: int = 0, log: Callable[[str], None] = print) -> list[KindResult]:
    """Train and score every kind in ``kinds`` with the config ``raw``; write the reports."""
    known = list_attention_kinds()
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown attention kind(s) {unknown}; available: {sorted(known)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = {**raw, "out_dir": str(out_dir / "runs")}
    results = []
    for kind in kinds:
        start = time.perf_counter()
        log(f"== {kind}")
        result = train_kind(kind, raw, levels, noise_examples=noise_examples,
                            noise_seed=noise_seed)
        results.append(result)
        status = result.error or (f"test accuracy {result.test_accuracy:.4f}, noise curve "
                                  f"{[round(a, 3) for a in result.robustness]}")
        log(f"   {kind}: {status} ({time.perf_counter() - start:.0f} s)")
        write_reports(results, raw, levels, out_dir)  # after each kind: a crash keeps the rest
    return results


def markdown_table(results: Sequence[KindResult], levels: Sequence[float]) -> str:
    """The comparison as a Markdown table (accuracy in percent)."""
    head = ["kind", "test acc %", "params", "train s"] + [f"noise {lv:g}" for lv in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if r.error:
            lines.append(f"| {r.kind} | failed: {r.error} |" + " |" * (len(head) - 2))
            continue
        noise = [f"{100 * a:.1f}" for a in r.robustness] or ["-"] * len(levels)
        lines.append("| " + " | ".join([r.kind, f"{100 * r.test_accuracy:.2f}",
                                        f"{r.parameters:,}", f"{r.train_seconds:.0f}", *noise])
                     + " |")
    return "\n".join(lines) + "\n"


def write_reports(results: Sequence[KindResult], raw: dict[str, Any], levels: Sequence[float],
                  out_dir: Path) -> None:
    rows = [r.row(levels) for r in results]
    write_csv(out_dir / "task_kinds.csv", rows)
    (out_dir / "task_kinds.md").write_text(markdown_table(results, levels))
    (out_dir / "task_kinds.json").write_text(json.dumps(
        {"config": raw, "levels": list(levels), "results": rows}, indent=2, default=str))
    if levels and any(r.robustness for r in results):
        plot_robustness(results, levels, out_dir / "robustness.png")


def plot_robustness(results: Sequence[KindResult], levels: Sequence[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    shown = [x for x in results if x.robustness]
    colours = distinct_colours(len(shown))
    markers = "osD^v<>ph*X"
    for i, r in enumerate(shown):
        ax.plot(levels, [100 * a for a in r.robustness], marker=markers[i % len(markers)],
                color=colours[i], label=r.kind)
    ax.set_xlabel("noise level")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parse_levels(text: str) -> list[float]:
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--levels takes comma-separated numbers, e.g. "
                                         f"0,0.1,0.2; got {text!r}") from None
    if any(v < 0 for v in levels):
        raise argparse.ArgumentTypeError(f"noise levels must be >= 0, got {levels}")
    return levels


def register(bench_subparsers: Any) -> None:
    """Add ``task-kinds`` to the ``attnkit bench`` subcommands."""
    p = bench_subparsers.add_parser(
        "task-kinds", help="train one model per attention kind on a task; accuracy and noise",
        description="Train the same configuration once per attention kind and compare test "
                    "accuracy, size, training time and accuracy under growing input noise.",
        epilog="example: attnkit bench task-kinds --config configs/listops.yaml "
               "--kinds mha,local,linear --out bench_results/listops")
    p.add_argument("--config", type=Path, default=None, help="YAML run config (as for train)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. train.epochs=5 (repeatable)")
    p.add_argument("--task", default=None, help="task name (overrides the config's)")
    p.add_argument("--kinds", default=None, help="comma-separated kinds (default: all)")
    p.add_argument("--levels", type=_parse_levels, default=list(DEFAULT_LEVELS),
                   help="comma-separated noise levels (empty string: no noise curve)")
    p.add_argument("--noise-examples", type=int, default=2000,
                   help="test examples per noise level (0: all)")
    p.add_argument("--out", type=Path, default=Path("bench_results/task_kinds"))
    p.set_defaults(handler=_run_from_args)


def _run_from_args(args: argparse.Namespace) -> int:
    from attnkit.train.config import apply_overrides, load_yaml

    overrides = [*args.set, "train.progress=false"]
    if args.task:
        overrides.append(f"task.name={args.task}")
    raw = apply_overrides(load_yaml(args.config) if args.config else {}, overrides)
    kinds = ([k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds
             else list(list_attention_kinds()))
    results = compare_kinds(raw, kinds, out_dir=args.out, levels=args.levels,
                            noise_examples=args.noise_examples or None)
    print(markdown_table(results, args.levels))
    print(f"written: {args.out}/task_kinds.csv, task_kinds.md, task_kinds.json"
          + (", robustness.png" if args.levels else ""))
    return 0 if all(not r.error for r in results) else 1
