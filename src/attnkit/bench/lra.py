"""``attnkit bench lra``: a Long Range Arena-style suite (Tay et al., 2021) that runs on a CPU.

Five tasks, each read as one long token sequence by the same small encoder classifier:

==========  ======================  ==========================================  ===============
suite name  registered task          what is classified                          tokens
==========  ======================  ==========================================  ===============
listops     ``listops``              value of a nested MIN/MAX/MED/SM expression  500-2,000
image       ``fashion-mnist-pixels`` clothing class from 8-bit pixel tokens       784
text        ``bible-books``          which of 10 books a byte-level passage is    1,000-4,000
retrieval   ``bible-retrieval``      do two byte-level passages share a book      1,001-4,001
pathfinder  ``pathfinder``           are the two dots joined by a dashed path     1,024
==========  ======================  ==========================================  ===============

Every attention kind (:func:`attnkit.layers.list_attention_kinds`) is trained on every task with
the same model, the same data and the same budget: a fixed number of optimizer steps (not a
fixed time), through the project's training loop (:func:`attnkit.bench.task_kinds.train_kind`).
Each cell reports test accuracy (best validation weights). Then, per task, every kind's
training step (forward, backward, AdamW) on the same fixed batch is timed side by side
(:func:`attnkit.bench.side_by_side.run_rounds`: each round times the first kind, then every
other kind right after it, after a warm-up step), giving each kind's median, min and max seconds
per step over the rounds and its speed-up over the first kind (median of per-round ratios); the
peak memory comes from one more step (:class:`attnkit.bench.harness.PeakMemory`). Before timing,
the step's loss and gradients are checked finite and the model's output deterministic: the
kinds compute different functions, so there is no cross-kind agreement to check (each kind's
agreement with the float64 reference is in the test suite).

Outputs in ``--out``: ``lra.csv`` (one row per task and kind), ``lra.md`` (command, scale,
environment and the tables), ``lra.json`` (all of it) and ``lra.png`` (accuracy against seconds
per step, one panel per task, one colour per kind). They are rewritten after every cell, so an
interrupted run keeps what it finished; ``--resume`` skips the cells already in ``lra.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attnkit.bench.harness import write_csv
from attnkit.bench.task_kinds import train_kind
from attnkit.layers import list_attention_kinds
from attnkit.tasks.listops import LRA_SETTINGS

if TYPE_CHECKING:
    from attnkit.tasks import Task

__all__ = ["LRA_TASKS", "SCALES", "LraCell", "LraScale", "LraTask", "environment", "run_lra"]


#: Sequence-length settings: "lra" as in LRA, "short" about a quarter of it (the CPU table in
#: docs/lra.md), "quick" a few dozen tokens (the smoke test).
LENGTHS = ("lra", "short", "quick")


@dataclass(frozen=True)
class LraTask:
    """One task of the suite: the registered task and its loader options per length setting."""

    name: str  # short name in the tables
    task: str  # registered task name (attnkit.tasks.list_tasks())
    options: dict[str, dict[str, Any]]  # LENGTHS -> loader options (split sizes: the scale's)
    lra_name: str  # the LRA task it stands for


LRA_TASKS: tuple[LraTask, ...] = (
    LraTask("listops", "listops", {
        "lra": dict(LRA_SETTINGS),
        "short": {**LRA_SETTINGS, "min_length": 125, "max_length": 500},
        "quick": {"max_depth": 3, "max_args": 4, "min_length": 8, "max_length": 48}},
        "ListOps"),
    LraTask("image", "fashion-mnist-pixels", {"lra": {}, "short": {"pool": 2},
                                              "quick": {"pool": 4}}, "Image (CIFAR-10 pixels)"),
    LraTask("text", "bible-books", {
        "lra": {"min_bytes": 1000, "max_bytes": 4000},
        "short": {"min_bytes": 250, "max_bytes": 1000},
        "quick": {"min_bytes": 32, "max_bytes": 64}}, "Text (IMDb bytes)"),
    LraTask("retrieval", "bible-retrieval", {
        "lra": {"min_bytes": 500, "max_bytes": 2000},
        "short": {"min_bytes": 125, "max_bytes": 500},
        "quick": {"min_bytes": 16, "max_bytes": 32}}, "Retrieval (AAN bytes)"),
    LraTask("pathfinder", "pathfinder", {
        "lra": {"size": 32}, "short": {"size": 16, "path_steps": 12},
        "quick": {"size": 12, "path_steps": 10}}, "Pathfinder-32"),
)
_BY_NAME = {t.name: t for t in LRA_TASKS}


@dataclass(frozen=True)
class LraScale:
    """Model size, data and budget: the same for every (task, kind) cell."""

    d_model: int = 32  # encoder width
    num_heads: int = 2  # attention heads
    num_layers: int = 1  # encoder layers
    d_ff: int = 64  # MLP hidden width
    steps: int = 30  # optimizer steps per cell (the training budget)
    batch_size: int = 4  # examples per step (also the timed batch)
    lr: float = 2e-3  # AdamW peak learning rate (warm-up 10%, cosine decay)
    num_train: int = 1000  # training examples per task (fashion-mnist: a seeded subsample)
    num_val: int = 50  # validation examples (picks the best weights at each epoch end)
    num_test: int = 200  # test examples
    repeats: int = 3  # side-by-side timing rounds per task (one step of each kind per round)
    lengths: str = "lra"  # one of LENGTHS


SCALES = {
    "cpu": LraScale(),
    "quick": LraScale(d_model=16, num_heads=2, num_layers=1, d_ff=32, steps=4, batch_size=4,
                      num_train=16, num_val=8, num_test=8, repeats=2, lengths="quick"),
}


@dataclass
class LraCell:
    """One kind on one task."""

    task: str
    kind: str
    test_accuracy: float = math.nan
    chance: float = math.nan  # accuracy of always answering the most frequent test label
    parameters: int = 0
    steps: int = 0
    loop_step_s: float = math.nan  # the training loop's mean seconds per step (incl. data)
    step_s: float = math.nan  # median over the side-by-side rounds of one training step
    step_s_min: float = math.nan
    step_s_max: float = math.nan
    forward_s: float = math.nan  # median seconds of one eval-mode forward pass
    speedup: float = math.nan  # median over rounds of reference step time / this kind's
    reference: str = ""  # the kind the speed-up is relative to (the first kind timed)
    peak_mib: float = math.nan  # peak extra memory of one training step
    timed_length: int = 0  # padded length of the timed batch
    error: str = ""

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def environment() -> dict[str, Any]:
    """CPU/GPU, torch version and threads: printed and recorded with every run."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _chance(task: Task) -> float:
    labels = [int(task.test[i][1]) for i in range(len(task.test))]  # type: ignore[arg-type]
    return max(labels.count(v) for v in set(labels)) / len(labels)


def task_options(spec: LraTask, scale: LraScale, seed: int) -> dict[str, Any]:
    """The loader options of ``spec`` at this scale (recorded in each run's config)."""
    if scale.lengths not in LENGTHS:
        raise ValueError(f"lengths must be one of {LENGTHS}, got {scale.lengths!r}")
    options = {**spec.options[scale.lengths], "seed": seed}
    if spec.task == "fashion-mnist-pixels":  # a real data set: subsampled, not generated
        return {**options, "val_size": scale.num_val,
                "max_examples": max(scale.num_train, scale.num_val, scale.num_test)}
    return {**options, "num_train": scale.num_train, "num_val": scale.num_val,
            "num_test": scale.num_test}


def load_suite_task(spec: LraTask, scale: LraScale, seed: int) -> Task:
    """The task at this scale's lengths and split sizes."""
    from attnkit.tasks import get_task
    from attnkit.tasks.splits import TensorPairDataset

    task = get_task(spec.task, **task_options(spec, scale, seed))
    if spec.task == "fashion-mnist-pixels":  # max_examples caps all splits alike: trim each
        for split, size in (("train", scale.num_train), ("val", scale.num_val),
                            ("test", scale.num_test)):
            data = getattr(task, split)
            assert isinstance(data, TensorPairDataset)  # what the task returns
            setattr(task, split, data.subset(range(min(size, len(data)))))
    return task


def run_config(spec: LraTask, scale: LraScale, *, seed: int, threads: int | None,
               out_dir: Path) -> dict[str, Any]:
    """The training config every kind gets on ``spec`` (only model.attention changes)."""
    return {
        "task": {"name": spec.task, "options": task_options(spec, scale, seed)},
        "model": {"family": "encoder", "d_model": scale.d_model, "num_heads": scale.num_heads,
                  "num_layers": scale.num_layers, "d_ff": scale.d_ff, "dropout": 0.0,
                  # build_model grows the position table to the task's longest input
                  "pooling": "mean", "positional": "learned", "max_length": 16},
        # the step budget ends training; epochs only bound it from above
        "train": {"epochs": 10_000, "max_steps": scale.steps, "batch_size": scale.batch_size,
                  "eval_batch_size": 2 * scale.batch_size, "lr": scale.lr,
                  "warmup_fraction": 0.1, "seed": seed, "device": "cpu",
                  "num_threads": threads, "progress": False, "tensorboard": False,
                  "keep_checkpoints": 1},
        "out_dir": str(out_dir / "runs" / spec.name),
    }


def _timed_batch(task: Task, batch_size: int, seed: int) -> Any:
    """The same seeded training batch for every kind."""
    from attnkit.train.data import collate

    generator = torch.Generator().manual_seed(seed)
    count = len(task.train)  # type: ignore[arg-type]
    picks = torch.randperm(count, generator=generator)[:batch_size].tolist()
    return collate([task.train[i] for i in picks], pad_id=task.pad_id)


class TrainingStep:
    """A fresh model of ``kind`` with the cell's config, its optimizer and the timed batch.

    ``forward()`` is one eval-mode forward pass, ``step()`` one training step (forward,
    backward, AdamW). Building it checks that the loss and every gradient are finite and that
    two eval-mode passes agree (raising FloatingPointError / RuntimeError otherwise).
    """

    def __init__(self, raw: dict[str, Any], kind: str, task: Task, *, seed: int) -> None:
        from attnkit.models import build_model, default_family
        from attnkit.train.config import apply_overrides, resolve_config
        from attnkit.train.loop import build_optimizer
        from attnkit.train.objectives import objective_for

        config = resolve_config(apply_overrides(raw, [f"model.attention={kind}"]),
                                family=default_family(task))
        torch.manual_seed(seed)
        self.kind, self.task = kind, task
        self.model = build_model(config.model, task)
        self.optimizer = build_optimizer(self.model, config)
        self.objective = objective_for(task)
        self.batch = _timed_batch(task, config.train.batch_size, seed)
        self.length = int(self.batch.inputs.shape[1])
        self._check()

    def _check(self) -> None:
        with torch.no_grad():
            self.model.eval()
            first = self.model(self.batch.inputs, self.batch.lengths)
            again = self.model(self.batch.inputs, self.batch.lengths)
        if not torch.equal(first, again):
            raise RuntimeError(f"{self.kind}: two eval-mode forward passes on the same batch "
                               f"differ by {float((first - again).abs().max()):.3g}")
        self.model.train()
        loss, _ = self.objective(self.model, self.batch, self.task, 0.0)
        loss.backward()
        bad = [n for n, p in self.model.named_parameters() if p.grad is not None
               and not bool(torch.isfinite(p.grad).all())]
        value = float(loss.detach())
        if not math.isfinite(value) or bad:
            raise FloatingPointError(f"{self.kind}: loss {value} or gradients of {bad[:3]} are "
                                     f"not finite before timing")

    def forward(self) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model(self.batch.inputs, self.batch.lengths)
        self.model.train()

    def step(self) -> None:
        from attnkit.layers import collect_auxiliary_losses

        loss, _ = self.objective(self.model, self.batch, self.task, 0.0)
        aux = collect_auxiliary_losses(self.model)
        total = loss + aux if aux is not None else loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()


def time_kinds_side_by_side(cells: Sequence[LraCell], raw: dict[str, Any], task: Task, *,
                            rounds: int, seed: int, log: Callable[[str], None]) -> None:
    """Fill in the time and memory of ``cells`` (one task), all kinds timed in the same rounds.

    Peak memory: one training step per kind. Time: :func:`attnkit.bench.side_by_side.run_rounds`
    with the first kind as the reference: every round times the reference's forward and
    training step, then each other kind's right after, so the machine's drift (this shared VM
    runs the same call at very different speeds minutes apart) hits every kind alike. A kind's
    seconds per step are the median, min and max over rounds; its speed-up is the median over
    rounds of reference / kind.
    """
    from attnkit.bench.harness import PeakMemory, time_call
    from attnkit.bench.side_by_side import MODES, run_rounds

    steps: dict[str, TrainingStep] = {}
    for cell in cells:
        try:
            steps[cell.kind] = TrainingStep(raw, cell.kind, task, seed=seed)
        except (RuntimeError, FloatingPointError, ValueError) as err:
            cell.error = f"timing: {type(err).__name__}: {err}".splitlines()[0][:300]
            continue
        steps[cell.kind].step()  # warm-up
        with PeakMemory("cpu") as mem:
            steps[cell.kind].step()
        cell.peak_mib, cell.timed_length = mem.mib, steps[cell.kind].length
    if not steps:
        return
    reference, *others = steps
    if not others:  # a single kind: time it alone, the same number of calls
        pair = (steps[reference].forward, steps[reference].step)
        samples = {mode: [time_call(pair[i]) for _ in range(rounds)]
                   for i, mode in enumerate(MODES)}
        _fill_times(next(c for c in cells if c.kind == reference), samples, reference, [])
        return
    timings = run_rounds((steps[reference].forward, steps[reference].step),
                         {k: (steps[k].forward, steps[k].step) for k in others},
                         rounds=rounds, calls=1, log=log)
    by_kind: dict[str, dict[str, list[float]]] = {k: {m: [] for m in MODES} for k in steps}
    ratios: dict[str, list[float]] = {k: [] for k in steps}
    for t in timings:
        by_kind[t.kind][t.mode].append(t.kind_s)
        if t.kind == others[0]:  # the reference's own time, once per round and mode
            by_kind[reference][t.mode].append(t.reference_s)
        if t.mode == MODES[1]:
            ratios[t.kind].append(t.speedup)
    for cell in cells:
        if cell.kind in steps:
            _fill_times(cell, by_kind[cell.kind], reference, ratios[cell.kind])


def _fill_times(cell: LraCell, samples: dict[str, list[float]], reference: str,
                ratios: list[float]) -> None:
    """Medians and spread of one kind's timed calls (MODES -> seconds per round)."""
    from attnkit.bench.side_by_side import MODES

    forward, step = samples[MODES[0]], samples[MODES[1]]
    if not step:
        return
    cell.step_s = statistics.median(step)
    cell.step_s_min, cell.step_s_max = min(step), max(step)
    cell.forward_s = statistics.median(forward) if forward else math.nan
    cell.reference = reference
    cell.speedup = statistics.median(ratios) if ratios else 1.0


def run_cell(spec: LraTask, kind: str, task: Task, raw: dict[str, Any], *,
             seed: int) -> LraCell:
    """Train and test ``kind`` on ``task`` (its timing comes later, side by side)."""
    cell = LraCell(task=spec.name, kind=kind, chance=_chance(task))
    trained = train_kind(kind, raw, [], noise_examples=None, noise_seed=seed, task=task)
    if trained.error:
        cell.error = trained.error
        return cell
    cell.test_accuracy, cell.parameters, cell.steps = (trained.test_accuracy, trained.parameters,
                                                       trained.steps)
    cell.loop_step_s = trained.train_seconds / max(trained.steps, 1)
    return cell


@dataclass
class LraRun:
    """What a run records besides its cells."""

    command: str
    scale: LraScale
    environment: dict[str, Any]
    tasks: list[str]
    kinds: list[str]
    seed: int
    cells: list[LraCell] = field(default_factory=list)
    task_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> lengths, source
    seconds: float = 0.0


def run_lra(tasks: Sequence[str], kinds: Sequence[str], scale: LraScale, *, out_dir: Path,
            command: str, seed: int = 0, threads: int | None = None, resume: bool = False,
            log: Callable[[str], None] = print) -> LraRun:
    """Every kind on every task; reports rewritten after each cell."""
    unknown_tasks = [t for t in tasks if t not in _BY_NAME]
    if unknown_tasks:
        raise ValueError(f"unknown LRA task(s) {unknown_tasks}; available: {list(_BY_NAME)}")
    known = list_attention_kinds()
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise ValueError(f"unknown attention kind(s) {unknown}; available: {sorted(known)}")
    if threads is not None:
        torch.set_num_threads(threads)
    run = LraRun(command=command, scale=scale, environment=environment(), tasks=list(tasks),
                 kinds=list(kinds), seed=seed)
    done = _previous_cells(out_dir / "lra.json", scale) if resume else {}
    log("environment: " + ", ".join(f"{k} {v}" for k, v in run.environment.items()))
    log(f"scale: {scale} (budget: {scale.steps} optimizer steps per cell)")
    started = time.perf_counter()
    for name in tasks:
        spec = _BY_NAME[name]
        load_start = time.perf_counter()
        try:
            task = load_suite_task(spec, scale, seed)
        except ImportError as err:  # MissingDataError: the message is the install command
            log(f"== {name}: skipped, {err}")
            run.task_info[name] = {"skipped": str(err)}
            continue
        lengths = [len(task.test[i][0]) for i in range(len(task.test))]  # type: ignore[arg-type]
        run.task_info[name] = {"registered": spec.task, "source": task.source,
                               "test_length_min": min(lengths),
                               "test_length_median": statistics.median(lengths),
                               "test_length_max": max(lengths), "classes": task.num_classes}
        log(f"== {name} ({spec.task}): lengths {min(lengths)}..{max(lengths)}, "
            f"{task.num_classes} classes, loaded in {time.perf_counter() - load_start:.0f} s")
        raw = run_config(spec, scale, seed=seed, threads=threads, out_dir=out_dir)
        cells = []
        for kind in kinds:
            if (name, kind) in done:
                cells.append(done[(name, kind)])
                run.cells.append(cells[-1])
                continue
            cell_start = time.perf_counter()
            cells.append(run_cell(spec, kind, task, raw, seed=seed))
            run.cells.append(cells[-1])
            log(f"   {kind:14s} " + (cells[-1].error or
                f"test accuracy {100 * cells[-1].test_accuracy:5.1f}% (chance "
                f"{100 * cells[-1].chance:.0f}%)") + f" ({time.perf_counter() - cell_start:.0f} s)")
            run.seconds = time.perf_counter() - started
            write_reports(run, out_dir)
        untimed = [c for c in cells if not c.error and math.isnan(c.speedup)]
        if untimed:
            log(f"   timing {len(untimed)} kinds side by side, {scale.repeats} rounds")
            time_kinds_side_by_side(untimed, raw, task, rounds=scale.repeats, seed=seed,
                                    log=lambda line: log("   " + line))
            for c in untimed:
                log(f"   {c.kind:14s} " + (c.error or
                    f"{1000 * c.step_s:.0f} ms/step [{1000 * c.step_s_min:.0f}-"
                    f"{1000 * c.step_s_max:.0f}], {c.speedup:.2f}x {c.reference}, "
                    f"{c.peak_mib:.0f} MiB"))
            run.seconds = time.perf_counter() - started
            write_reports(run, out_dir)  # the timings, before the next task's first cell
    run.seconds = time.perf_counter() - started
    write_reports(run, out_dir)
    return run


def _previous_cells(path: Path, scale: LraScale) -> dict[tuple[str, str], LraCell]:
    if not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    if saved.get("scale") != dataclasses.asdict(scale):
        raise ValueError(f"--resume: {path} was written at scale {saved.get('scale')}, not "
                         f"{dataclasses.asdict(scale)}; use another --out or the same scale")
    names = {f.name for f in dataclasses.fields(LraCell)}
    cells = [LraCell(**{k: v for k, v in row.items() if k in names}) for row in saved["cells"]]
    return {(c.task, c.kind): c for c in cells if not c.error}


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def markdown_report(run: LraRun) -> str:
    """Command, scale, environment, then accuracy, time and memory tables (kinds x tasks)."""
    tasks = [t for t in run.tasks if any(c.task == t for c in run.cells)]
    cell = {(c.task, c.kind): c for c in run.cells}
    s = run.scale
    lines = [f"command: `{run.command}`", "",
             f"scale: {s.num_layers} layers, d_model {s.d_model}, {s.num_heads} heads, d_ff "
             f"{s.d_ff}; budget {s.steps} optimizer steps of batch {s.batch_size} per cell "
             f"(lr {s.lr:g}); {s.num_train} train / {s.num_val} val / {s.num_test} test "
             f"examples per task; {s.repeats} side-by-side timing rounds per task"
             + f"; lengths: {s.lengths}", "",
             "environment: " + ", ".join(f"{k} {v}" for k, v in run.environment.items()),
             "", f"suite time: {run.seconds / 60:.1f} min", ""]

    def table(title: str, value: Callable[[LraCell], str], footer: list[str] | None = None
              ) -> None:
        lines.extend([f"**{title}**", "", "| kind | " + " | ".join(tasks) + " |",
                      "|---|" + "---:|" * len(tasks)])
        for kind in run.kinds:
            row = [cell.get((t, kind)) for t in tasks]
            if all(c is None for c in row):
                continue
            lines.append(f"| {kind} | " + " | ".join(
                "-" if c is None else ("failed" if c.error else value(c)) for c in row) + " |")
        lines.extend(footer or [])
        lines.append("")

    chance = ["| chance | " + " | ".join(
        _percent(next((c.chance for c in run.cells if c.task == t), math.nan)) for t in tasks)
        + " |"]
    table("test accuracy (%)", lambda c: _percent(c.test_accuracy), chance)
    table("seconds per training step: median [min-max] over the side-by-side rounds",
          lambda c: f"{c.step_s:.3f} [{c.step_s_min:.3f}-{c.step_s_max:.3f}]")
    reference = next((c.reference for c in run.cells if c.reference), "the first kind")
    table(f"training-step speed-up over {reference} (median of per-round ratios)",
          lambda c: f"{c.speedup:.2f}x")
    table("peak memory of a training step (MiB)", lambda c: f"{c.peak_mib:.0f}")
    failed = [c for c in run.cells if c.error]
    if failed:
        lines += ["**failed cells**", ""] + [f"- {c.task} / {c.kind}: {c.error}" for c in failed]
        lines.append("")
    timed = {c.task: c.timed_length for c in run.cells if c.timed_length}
    lengths = [f"{t}: {i['test_length_min']}-{i['test_length_max']} tokens (timed batch padded "
               f"to {timed.get(t, '-')})" for t, i in run.task_info.items()
               if "test_length_min" in i]
    skipped = [f"{t}: skipped, {i['skipped']}" for t, i in run.task_info.items()
               if "skipped" in i]
    lines += ["test lengths: " + "; ".join(lengths), *skipped]
    return "\n".join(lines) + "\n"


def write_reports(run: LraRun, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "lra.csv", [c.row() for c in run.cells])
    (out_dir / "lra.md").write_text(markdown_report(run))
    (out_dir / "lra.json").write_text(json.dumps(
        {"command": run.command, "scale": dataclasses.asdict(run.scale),
         "environment": run.environment, "seed": run.seed, "tasks": run.tasks,
         "kinds": run.kinds, "task_info": run.task_info, "seconds": run.seconds,
         "cells": [c.row() for c in run.cells]}, indent=2, default=str))
    if any(_plotted(c) for c in run.cells):
        plot_accuracy_vs_time(run, out_dir / "lra.png")


def _plotted(cell: LraCell) -> bool:
    """Trained and timed: a point on the plot."""
    return not cell.error and math.isfinite(cell.step_s) and math.isfinite(cell.test_accuracy)


def plot_accuracy_vs_time(run: LraRun, path: Path) -> None:
    """One panel per task: test accuracy against seconds per step, a colour per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    tasks = [t for t in run.tasks if any(c.task == t and _plotted(c) for c in run.cells)]
    columns = min(3, len(tasks))
    rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    tab20 = plt.get_cmap("tab20")  # 20 distinct colours in pairs: dark shades first, then light
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    markers = "osD^v<>ph*X"
    style = {k: (tab20(order[i % 20]), markers[i % len(markers)])
             for i, k in enumerate(run.kinds)}
    for ax, name in zip(axes.flat, tasks, strict=False):
        cells = [c for c in run.cells if c.task == name and _plotted(c)]
        for c in cells:
            colour, marker = style[c.kind]
            ax.errorbar([c.step_s], [100 * c.test_accuracy],
                        xerr=[[c.step_s - c.step_s_min], [c.step_s_max - c.step_s]],
                        fmt=marker, color=colour, markersize=7, capsize=2)
        ax.axhline(100 * cells[0].chance, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # crowded labels on a short log range
        ax.set_title(name)
        ax.set_xlabel("seconds per training step (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    handles = [Line2D([], [], color=colour, marker=marker, linestyle="", label=kind)
               for kind, (colour, marker) in style.items()]
    handles.append(Line2D([], [], color="grey", linestyle="--",
                          label="chance (most frequent label)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8,
               title="attention kind (bars: min-max of the timed steps)", title_fontsize=8)
    legend_inches = 0.35 + 0.2 * -(-len(handles) // 6)  # title + rows of six entries
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad}; choose from {list(known)}")
    return names


def register(bench_subparsers: Any) -> None:
    """Add ``lra`` to the ``attnkit bench`` subcommands."""
    p = bench_subparsers.add_parser(
        "lra", help="Long Range Arena-style suite: accuracy, s/step and memory of every kind",
        description="Train every attention kind on five long-sequence tasks (ListOps, pixel "
                    "images, byte-level text, retrieval pairs, Pathfinder) with the same model "
                    "and the same fixed number of steps; report test accuracy, seconds per "
                    "training step and peak memory (CSV, Markdown, PNG).",
        epilog="example: attnkit bench lra --quick --out bench_results/lra_quick")
    p.add_argument("--quick", action="store_true",
                   help="quick lengths, a tiny model and a few steps: a smoke test in seconds")
    p.add_argument("--tasks", default=",".join(_BY_NAME),
                   type=lambda t: _names(t, list(_BY_NAME), "task(s)"),
                   help=f"comma-separated tasks (default: all of {','.join(_BY_NAME)})")
    p.add_argument("--kinds", default=None, help="comma-separated kinds (default: all)")
    for f in dataclasses.fields(LraScale):
        extra: dict[str, Any] = {"choices": LENGTHS} if f.name == "lengths" else {}
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                       help=f"default {f.default} (quick: {getattr(SCALES['quick'], f.name)})",
                       **extra)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="keep the cells already in OUT/lra.json (same scale) and run the rest")
    p.add_argument("--out", type=Path, default=Path("bench_results/lra"))
    p.set_defaults(handler=_run_from_args)


def _command_line(args: argparse.Namespace) -> str:
    """The command that repeats this run (its options spelled out), for the reports."""
    words = ["attnkit", "bench", "lra"] + (["--quick"] if args.quick else [])
    words += ["--tasks", ",".join(args.tasks)] if args.tasks != list(_BY_NAME) else []
    words += ["--kinds", args.kinds] if args.kinds else []
    for f in dataclasses.fields(LraScale):
        if getattr(args, f.name) is not None:
            words += ["--" + f.name.replace("_", "-"), str(getattr(args, f.name))]
    words += ["--threads", str(args.threads)] if args.threads is not None else []
    words += ["--seed", str(args.seed)] if args.seed else []
    words += ["--out", str(args.out)]
    return " ".join(shlex.quote(w) for w in words)


def _run_from_args(args: argparse.Namespace) -> int:
    base = SCALES["quick" if args.quick else "cpu"]
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(LraScale)
               if getattr(args, f.name) is not None}
    bad = {k: v for k, v in changes.items() if k != "lengths" and v <= 0}
    if bad:
        raise ValueError(f"scale values must be > 0, got {bad}")
    scale = dataclasses.replace(base, **changes)
    kinds = (_names(args.kinds, list(list_attention_kinds()), "attention kind(s)")
             if args.kinds else list(list_attention_kinds()))
    command = _command_line(args)
    run = run_lra(args.tasks, kinds, scale, out_dir=args.out, command=command, seed=args.seed,
                  threads=args.threads, resume=args.resume)
    print(markdown_report(run))
    print(f"written: {args.out}/lra.csv, lra.md, lra.json, lra.png")
    return 0 if all(not c.error for c in run.cells) else 1
