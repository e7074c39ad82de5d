"""The training loop: schedule, data order, exact resume, interruption, early stopping."""

from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from attnkit.train import loop as train_loop
from attnkit.train.checkpoint import latest_checkpoint, newest_intact_checkpoint
from attnkit.train.config import ConfigError, resolve_config
from attnkit.train.data import collate, epoch_batches
from attnkit.train.loop import metric_is_minimized, train
from attnkit.train.schedule import warmup_cosine

REPO = Path(__file__).resolve().parents[1]

# The digits task loads through scikit-learn (~2 s to import). Imported with the module, it is
# shared by forked test processes (mutation testing forks one per mutant) instead of imported
# again in each.
with contextlib.suppress(ImportError):
    import sklearn.datasets  # noqa: F401


def tiny_config(tmp_path: Path, model: dict[str, Any] | None = None,
                task_options: dict[str, Any] | None = None, **train_options: Any):
    raw = {"task": {"name": "digits", "options": task_options or {}}, "preset": "tiny",
           "out_dir": str(tmp_path),
           "model": {"family": "vit", **(model or {})},
           "train": {"epochs": 3, "batch_size": 128, "progress": False, "tensorboard": False,
                     "num_threads": 1, "eval_batch_size": 512, **train_options}}
    return resolve_config(raw)


def test_warmup_cosine() -> None:
    lrs = [warmup_cosine(s, total_steps=10, peak_lr=1.0, warmup_steps=2) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[1:]))  # decays after warmup
    assert warmup_cosine(10, total_steps=10, peak_lr=1.0, warmup_steps=2,
                         min_lr_ratio=0.1) == pytest.approx(0.1)


def test_epoch_batches_are_reproducible_and_sharded() -> None:
    a = epoch_batches(10, batch_size=3, seed=1, epoch=2)
    assert a == epoch_batches(10, batch_size=3, seed=1, epoch=2)
    assert a != epoch_batches(10, batch_size=3, seed=1, epoch=3)
    assert sorted(i for b in a for i in b) == list(range(10))
    shards = [epoch_batches(11, batch_size=2, seed=0, epoch=0, rank=r, world_size=2)
              for r in range(2)]
    assert len(shards[0]) == len(shards[1])  # every process steps equally often under DDP
    assert set(i for s in shards for b in s for i in b) == set(range(11))


def test_collate_pads_tokens_and_frames() -> None:
    batch = collate([(torch.tensor([5, 6, 7]), torch.tensor(1)),
                     (torch.tensor([8]), torch.tensor(0))], pad_id=0)
    assert batch.inputs.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.lengths is not None and batch.lengths.tolist() == [3, 1]
    frames = collate([(torch.randn(4, 2), 1), (torch.randn(2, 2), 0)])
    assert frames.inputs.shape == (2, 4, 2) and float(frames.inputs[1, 2:].abs().sum()) == 0.0
    same = collate([(torch.randn(1, 8, 8), 3), (torch.randn(1, 8, 8), 4)])
    assert same.lengths is None and same.targets.tolist() == [3, 4]


def test_metric_direction() -> None:
    assert metric_is_minimized("loss") and metric_is_minimized("perplexity")
    assert not metric_is_minimized("accuracy") and not metric_is_minimized("bleu")
    assert metric_is_minimized("word_error_rate") and metric_is_minimized("val_loss")


def _comparable(history: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(r["epoch"], r["step"], r["lr"], json.dumps(r["train"]), json.dumps(r["val"]))
            for r in history]


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropout, augmentation RNG, data order, optimizer and schedule all continue exactly.

    The run is interrupted (KeyboardInterrupt, as Ctrl-C) in the middle of its second epoch;
    the last checkpoint is mid-epoch (checkpoint_every=7)."""
    options = {"checkpoint_every": 7}
    model = {"dropout": 0.1}
    shifts = {"augment_shift": 1}  # random shifts draw from the RNG too
    full = train(tiny_config(tmp_path, model, shifts, **options), run_dir=tmp_path / "full")

    calls = {"n": 0}
    original = train_loop.collect_auxiliary_losses

    def interrupt_at_step_18(module: torch.nn.Module) -> Any:
        calls["n"] += 1
        if calls["n"] == 18:
            raise KeyboardInterrupt
        return original(module)

    monkeypatch.setattr(train_loop, "collect_auxiliary_losses", interrupt_at_step_18)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, model, shifts, **options), run_dir=tmp_path / "cut")
    monkeypatch.setattr(train_loop, "collect_auxiliary_losses", original)
    last = latest_checkpoint(tmp_path / "cut" / "checkpoints")
    assert last is not None and last.name == "step-00000014"

    resumed = train(tiny_config(tmp_path, model, shifts, **options), run_dir=tmp_path / "cut",
                    resume=True)
    assert resumed.steps == full.steps == 30
    assert resumed.step_losses == full.step_losses[14:]  # bit for bit
    assert _comparable(resumed.history) == _comparable(full.history)
    assert resumed.test == full.test
    a = load_file(str(tmp_path / "full" / "best" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "best" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_stops_when_the_metric_stalls(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # lr 1e-12 leaves float32 weights unchanged: the metric cannot improve after epoch 1
    result = train(tiny_config(tmp_path, epochs=20, lr=1e-12, patience=2),
                   run_dir=tmp_path / "r")
    assert result.stopped_early
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2", "epoch 3"]
    assert lines[0].endswith(" (best)") and not lines[1].endswith(("(best)", "early stop"))
    assert lines[2].endswith(f"{result.history[2]['val']['accuracy']:.4f} - early stop")
    assert len(result.history) == 3  # best at epoch 1, then two evaluations without progress
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["stopped_early"] and metrics["best"]["epoch"] == 1
    assert set(metrics["test"]) >= {"accuracy", "loss"}


def test_auxiliary_losses_are_added(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def fake_aux(module: torch.nn.Module) -> torch.Tensor:
        # A loss on the parameters: the update must differ from a run without it.
        value = sum(p.square().sum() for p in module.parameters())
        seen.append(float(value.detach()))
        return value  # type: ignore[return-value]

    base = train(tiny_config(tmp_path, epochs=1, max_steps=2), run_dir=tmp_path / "a")
    monkeypatch.setattr(train_loop, "collect_auxiliary_losses", fake_aux)
    with_aux = train(tiny_config(tmp_path, epochs=1, max_steps=2, aux_loss_weight=10.0),
                     run_dir=tmp_path / "b")
    assert len(seen) == 2
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-00000002" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert base.steps == with_aux.steps == 2


def test_max_minutes_stops_training_then_validates_and_tests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = train(tiny_config(tmp_path, epochs=50, max_minutes=1e-6), run_dir=tmp_path / "r")
    # One step, then a partial-epoch validation kept out of the history (a resume with a larger
    # budget continues that epoch exactly), then the test split with the current weights.
    assert result.steps == 1 and result.history == []
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    stopped = metrics["stopped"]
    assert {k: stopped[k] for k in ("reason", "step", "epoch", "batch")} == {
        "reason": "budget", "step": 1, "epoch": 1, "batch": 1}
    accuracy = stopped["val"]["accuracy"]
    assert (f"budget reached at step 1 (epoch 1, batch 1): val accuracy {accuracy:.4f}; raise "
            f"train.max_steps / train.max_minutes and --resume {tmp_path / 'r'} to continue"
            ) in capsys.readouterr().out
    assert "accuracy" in result.test
    with pytest.raises(ConfigError, match=r"train\.max_minutes=0\.0 is not allowed"):
        tiny_config(tmp_path, max_minutes=0.0)
    assert not (tmp_path / "bad").exists()


def test_a_run_reports_its_epochs_scalars_and_lines_by_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a run records, recomputed from the schedule and the per-step losses: every step's
    loss and learning rate (TensorBoard scalars), each epoch's record (step, last lr, the
    example-weighted train loss, throughput, validation) and its scalars and console line,
    the best record and the test metrics in metrics.json and the TrainResult."""
    from attnkit.tasks import get_task
    from attnkit.train.logging import RunLogger

    written: list[tuple[int, dict[str, float]]] = []
    monkeypatch.setattr(RunLogger, "scalars",
                        lambda self, step, values: written.append((step, dict(values))))
    import time

    # checkpoint_every=2: the epochs' seconds add up over the pauses for checkpoints
    config = tiny_config(tmp_path, epochs=2, batch_size=256, warmup_fraction=0.25,
                         min_lr_ratio=0.1, checkpoint_every=2)
    started = time.perf_counter()
    result = train(config, run_dir=tmp_path / "r")
    wall = time.perf_counter() - started
    out = capsys.readouterr().out
    examples = len(get_task("digits").train)
    sizes = [[len(b) for b in epoch_batches(examples, batch_size=256, seed=config.train.seed,
                                            epoch=e)] for e in range(2)]
    steps = len(sizes[0]) + len(sizes[1])
    assert result.steps == steps and len(result.step_losses) == steps
    lrs = [warmup_cosine(s, total_steps=steps, peak_lr=config.train.lr,
                         warmup_steps=round(0.25 * steps), min_lr_ratio=0.1)
           for s in range(steps)]
    per_step = [(s, v) for s, v in written if "train/loss" in v]
    assert [s for s, _ in per_step] == list(range(1, steps + 1))
    for (_, values), loss, lr in zip(per_step, result.step_losses, lrs, strict=True):
        assert values == {"train/loss": loss, "train/lr": pytest.approx(lr, rel=1e-12)}
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    history = metrics["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    assert [r["step"] for r in history] == [len(sizes[0]), steps]
    first = 0
    for record, epoch_sizes in zip(history, sizes, strict=True):
        losses = result.step_losses[first:first + len(epoch_sizes)]
        first += len(epoch_sizes)
        weighted = sum(loss * n for loss, n in zip(losses, epoch_sizes)) / examples
        assert record["lr"] == pytest.approx(lrs[record["step"] - 1], rel=1e-12)
        assert record["train"]["loss"] == pytest.approx(weighted, rel=1e-5)
        assert 0.0 <= record["train"]["accuracy"] <= 1.0 and set(record["val"]) >= {"accuracy"}
        assert record["seconds"] > 0
        assert record["throughput"] == pytest.approx(examples / record["seconds"], rel=1e-9)
        epoch_scalars = [v for s, v in written if s == record["step"] and "train/loss" not in v]
        assert epoch_scalars == [
            {f"val/{k}": v for k, v in record["val"].items()},
            {"train/throughput": record["throughput"],
             **{f"train/{k}_epoch": v for k, v in record["train"].items()}}]
        best = " (best)" if metrics["best"]["epoch"] == record["epoch"] or \
            record["epoch"] == 1 else ""
        assert (f"epoch {record['epoch']}: train loss {record['train']['loss']:.4f}, val "
                f"accuracy {record['val']['accuracy']:.4f}{best}\n") in out
    assert metrics["best"] == max(history, key=lambda r: r["val"]["accuracy"])
    assert result.best == metrics["best"] and result.history == history
    assert metrics["test"] == result.test and set(result.test) >= {"accuracy", "loss"}
    assert metrics["steps"] == steps and metrics["stopped_early"] is False
    assert metrics["train_seconds"] == result.train_seconds < wall
    assert result.train_seconds == pytest.approx(sum(r["seconds"] for r in history), rel=1e-9)
    assert (f"test accuracy: {result.test['accuracy']:.4f} "
            f"({result.train_seconds:.1f} s of training)") in out
    assert (tmp_path / "r" / "best" / "model.safetensors").is_file()


def test_budgets_improvement_and_early_stopping_rules() -> None:
    """max_steps and max_minutes (the running epoch's time counts), what counts as better for
    minimized and maximized metrics (a tie is not), and patience counting evaluations without
    progress since the last improvement."""
    import time

    from attnkit.train.config import TrainConfig

    spent = train_loop._budget_spent
    steps = TrainConfig(max_steps=5)
    assert not spent(steps, 4, 0.0, None) and spent(steps, 5, 0.0, None)
    assert not spent(TrainConfig(), 10**9, 1e9, None)  # no budget set
    minutes = TrainConfig(max_minutes=1.0)
    assert not spent(minutes, 10**9, 59.0, None) and spent(minutes, 0, 60.0, None)
    started = time.perf_counter() - 30.0  # the current epoch began 30 s ago
    assert spent(minutes, 0, 31.0, started) and not spent(minutes, 0, 25.0, started)

    improved = train_loop._improved
    assert improved(1.0, None, "loss") and improved(0.5, 1.0, "loss")
    assert not improved(1.0, 1.0, "loss") and not improved(2.0, 1.0, "loss")
    assert improved(0.6, 0.5, "accuracy") and not improved(0.5, 0.5, "accuracy")
    assert not improved(0.4, 0.5, "accuracy")

    progress = train_loop._Progress()
    early = train_loop._EarlyStopping("accuracy", patience=2)
    assert early.update(progress, 0.5, {"epoch": 1})
    assert (progress.best, progress.best_record, progress.bad_evals) == (0.5, {"epoch": 1}, 0)
    assert not early.update(progress, 0.4, {"epoch": 2}) and progress.bad_evals == 1
    assert not progress.stopped_early
    assert early.update(progress, 0.7, {"epoch": 3}) and progress.bad_evals == 0  # reset
    assert not early.update(progress, 0.7, {"epoch": 4}) and not progress.stopped_early
    assert not early.update(progress, 0.1, {"epoch": 5}) and progress.stopped_early
    assert progress.best == 0.7 and progress.best_record == {"epoch": 3}
    patient = train_loop._Progress()
    never = train_loop._EarlyStopping("loss", patience=None)
    for value in (1.0, 2.0, 3.0, 4.0):
        never.update(patient, value, {})
    assert patient.bad_evals == 3 and not patient.stopped_early and patient.best == 1.0


def test_checkpoint_cadence_precision_and_rng_state() -> None:
    """Checkpoints every N steps and/or once M minutes passed since the last save; bf16
    autocast only on CUDA under precision auto / bf16; the RNG state saved and restored
    (also from a checkpoint that stored it as another integer dtype)."""
    import contextlib
    import time
    import warnings

    policy = train_loop._CheckpointPolicy(every_steps=3, every_minutes=0.0)
    assert [s for s in range(1, 10) if policy.due(s)] == [3, 6, 9]
    timed = train_loop._CheckpointPolicy(every_steps=0, every_minutes=2.0)
    assert not timed.due(1)
    timed.last = time.monotonic() - 121.0
    assert timed.due(1)
    timed.saved()
    assert not timed.due(2)
    timed.last = time.monotonic() - 100.0  # 100 s < 2 minutes
    assert not timed.due(3)
    off = train_loop._CheckpointPolicy(every_steps=0, every_minutes=0.0, last=0.0)
    assert not any(off.due(s) for s in range(1, 10))

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for precision in ("auto", "bf16", "fp32"):
        assert isinstance(train_loop._autocast(cpu, precision), contextlib.nullcontext)
    assert isinstance(train_loop._autocast(cuda, "fp32"), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without CUDA torch warns that it disables autocast
        for precision in ("auto", "bf16"):
            context = train_loop._autocast(cuda, precision)
            assert isinstance(context, torch.autocast)
            assert context.device == "cuda" and context.fast_dtype == torch.bfloat16

    state = train_loop._rng_state(cpu)
    assert set(state) == {"torch"}
    first = torch.rand(4)
    train_loop._set_rng_state({"torch": state["torch"].long()}, cpu)
    assert torch.equal(torch.rand(4), first)


def test_prepare_schedule_lengths_and_refusals(tmp_path: Path) -> None:
    """The schedule spans epochs x batches (or schedule_steps); warmup is the rounded share,
    at least one step when the share is positive, none at 0; a task without a metric or
    without training batches is refused by name before any directory exists."""
    import dataclasses

    from attnkit.errors import UsageError
    from attnkit.tasks import get_task
    from attnkit.train import distributed

    task = get_task("digits")
    info = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    per_epoch = len(epoch_batches(len(task.train), batch_size=128, seed=0, epoch=0))
    run = train_loop._prepare(tiny_config(tmp_path, warmup_fraction=0.2), task, info)
    assert run.total_steps == 3 * per_epoch and run.warmup == round(0.2 * 3 * per_epoch)
    assert run.progress == train_loop._Progress()
    run = train_loop._prepare(tiny_config(tmp_path, schedule_steps=7, warmup_fraction=0.01),
                              task, info)
    assert (run.total_steps, run.warmup) == (7, 1)  # 0.07 rounds to 0: one step still
    run = train_loop._prepare(tiny_config(tmp_path, warmup_fraction=0.0), task, info)
    assert run.warmup == 0
    with pytest.raises(UsageError, match=r"^task 'digits' names no metric$"):
        train_loop._prepare(tiny_config(tmp_path), dataclasses.replace(task, metric=""), info)
    with pytest.raises(UsageError, match=r"^task 'digits' has no training batches on this "
                                         r"process$"):
        train_loop._prepare(tiny_config(tmp_path), dataclasses.replace(task, train=[]), info)
    assert list(tmp_path.iterdir()) == []


def test_resume_point_run_dir_claims_and_missing_metric(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A damaged newest checkpoint falls back to the previous one with a warning; none intact
    names each problem; an explicit run_dir anywhere (not under out_dir) is used as given and
    replaced with overwrite; a task metric the validation does not report is named."""
    import dataclasses

    from attnkit.errors import UsageError
    from attnkit.tasks import get_task

    run = tmp_path / "elsewhere" / "r"
    result = train(tiny_config(tmp_path / "out", max_steps=2, checkpoint_every=1), run_dir=run)
    assert result.run_dir == run and (run / "metrics.json").is_file()
    assert not (tmp_path / "out").exists()
    capsys.readouterr()
    (run / "checkpoints" / "step-00000002" / "manifest.json").unlink()
    assert train_loop._resume_point(run) == run / "checkpoints" / "step-00000001"
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and err.count("\n") == 2  # latest.json and step 2
    assert err.rstrip().endswith("; falling back to step-00000001")
    (run / "checkpoints" / "step-00000001" / "manifest.json").unlink()
    problems = newest_intact_checkpoint(run / "checkpoints")[1]
    assert len(problems) == 3  # latest.json, then both step directories
    with pytest.raises(UsageError) as refused:
        train_loop._resume_point(run)
    assert str(refused.value) == (f"nothing to resume in {str(run)!r}: no intact checkpoint "
                                  f"({'; '.join(problems)}); start a new run instead")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match=r"no intact checkpoint; start a new run instead$"):
        train_loop._resume_point(empty)
    with pytest.raises(UsageError, match="already exists"):
        train(tiny_config(tmp_path / "out", max_steps=1), run_dir=run)
    again = train(tiny_config(tmp_path / "out", max_steps=1), run_dir=run, overwrite=True)
    assert again.steps == 1 and json.loads((run / "metrics.json").read_text())["steps"] == 1
    bleu = dataclasses.replace(get_task("digits"), metric="bleu")
    with pytest.raises(ValueError, match=r"^task metric 'bleu' is not among the validation "
                                         r"metrics \['accuracy', 'loss'\]$"):
        train(tiny_config(tmp_path, max_steps=1), task=bleu, run_dir=tmp_path / "bleu")


def test_a_gpu_checkpoints_rng_state_resumes_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on CUDA saves and restores its GPU's generator too (as uint8, whatever integer
    dtype the checkpoint stored); a checkpoint written on CUDA restores on the CPU by setting
    the CPU generator only, and a CPU checkpoint resumed on CUDA leaves the GPU's alone. (The
    CUDA runtime calls are recorded here, so this runs without a GPU.)"""
    calls: list[tuple[Any, ...]] = []
    gpu_state = torch.arange(5, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda device: calls.append(("get", device)) or gpu_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(
        ("set", state.dtype, state.tolist(), device)))
    gpu, cpu = torch.device("cuda", 1), torch.device("cpu")
    state = train_loop._rng_state(gpu)
    assert set(state) == {"torch", "cuda"} and state["cuda"] is gpu_state
    assert torch.equal(state["torch"], torch.get_rng_state()) and calls == [("get", gpu)]
    calls.clear()
    expected = torch.rand(3)
    train_loop._set_rng_state({"torch": state["torch"].long(), "cuda": gpu_state.long()}, gpu)
    assert calls == [("set", torch.uint8, [0, 1, 2, 3, 4], gpu)]
    assert torch.equal(torch.rand(3), expected)
    calls.clear()
    train_loop._set_rng_state({"torch": state["torch"]}, gpu)  # a checkpoint of a CPU run
    assert torch.equal(torch.rand(3), expected) and calls == []
    train_loop._set_rng_state({"torch": state["torch"], "cuda": gpu_state}, cpu)
    assert torch.equal(torch.rand(3), expected) and calls == []
    assert set(train_loop._rng_state(cpu)) == {"torch"} and calls == []


def test_the_test_split_is_scored_with_the_best_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation says epoch 2 of 3 was best (forced here; epochs 1 and 2 both improved, so the
    best weights were saved twice), so the test split is scored with the weights saved then,
    not with the last epoch's."""
    from attnkit.tasks import get_task
    from attnkit.train.checkpoint import load_checkpoint, load_weights
    from attnkit.train.run import build_run_model

    scores = iter([0.5, 0.9, 0.1])
    real_validate = train_loop._validate
    monkeypatch.setattr(train_loop, "_validate",
                        lambda run: {**real_validate(run), "accuracy": next(scores)})
    config = tiny_config(tmp_path, epochs=3, batch_size=256)
    result = train(config, run_dir=tmp_path / "r")
    assert result.best is not None and result.best["epoch"] == 2
    task = get_task("digits")

    def score(load: Any) -> dict[str, float]:
        model = build_run_model(config, task, None)
        load(model)
        return train_loop.evaluate(model, task.test, task, batch_size=512)

    last = latest_checkpoint(tmp_path / "r" / "checkpoints")
    assert last is not None and last.name == f"step-{result.steps:08d}"
    best = tmp_path / "r" / "best" / "model.safetensors"
    assert result.test == score(lambda model: load_weights(model, best))
    assert result.test != score(lambda model: load_checkpoint(last, model))


def test_train_refusals_family_default_and_kept_checkpoints(tmp_path: Path) -> None:
    """resume without a run directory, or with one that holds no config, is refused by name;
    a config without a model family trains the task's default family; keep_checkpoints=1
    leaves only the newest step checkpoint."""
    from attnkit.errors import UsageError

    with pytest.raises(UsageError, match=r"^resume needs the run directory$"):
        train(tiny_config(tmp_path), resume=True)
    missing = tmp_path / "missing"
    with pytest.raises(UsageError) as refused:
        train(tiny_config(tmp_path), run_dir=missing, resume=True)
    assert str(refused.value) == (f"nothing to resume: {str(missing)!r} is not a run directory "
                                  f"(no config.yaml)")
    config = tiny_config(tmp_path, max_steps=3, checkpoint_every=1, keep_checkpoints=1)
    config.model.family = None  # type: ignore[assignment]
    result = train(config, run_dir=tmp_path / "r")
    assert config.model.family == "vit" and result.steps == 3  # digits: a ViT
    assert [p.name for p in (tmp_path / "r" / "checkpoints").glob("step-*")] == ["step-00000003"]


def test_a_run_without_run_dir_is_named_after_task_and_family(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No run_dir: a new directory under out_dir named task-family-time, said on the console;
    with tensorboard off there is no TensorBoard line and no tensorboard directory."""
    result = train(tiny_config(tmp_path, max_steps=1))
    assert result.run_dir.parent == tmp_path and result.run_dir.name.startswith("digits-vit-")
    out = capsys.readouterr().out
    assert out.startswith(f"run directory: {result.run_dir}\n")
    assert "TensorBoard" not in out and not (result.run_dir / "tensorboard").exists()


@pytest.mark.parametrize("at_epoch_end", [False, True])
def test_a_stop_request_saves_a_checkpoint_then_raises_with_where_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        at_epoch_end: bool) -> None:
    """SIGTERM during a step: inside an epoch the run stops after that step with the epoch's
    statistics so far in the checkpoint; in an epoch's last step it first validates and saves
    the epoch's end. Either way TrainingInterrupted carries the run directory, step, epoch
    (1-based, the one to resume in) and signal, and the handlers are restored."""
    import signal

    from attnkit.tasks import get_task
    from attnkit.train.checkpoint import load_checkpoint
    from attnkit.train.interrupts import TrainingInterrupted
    from attnkit.train.run import build_run_model

    per_epoch = len(epoch_batches(len(get_task("digits").train), batch_size=256, seed=0,
                                  epoch=0))
    stop_at = per_epoch if at_epoch_end else 2
    calls = {"n": 0}
    original = train_loop.collect_auxiliary_losses

    def signal_during_a_step(module: torch.nn.Module) -> Any:
        calls["n"] += 1
        if calls["n"] == stop_at:
            signal.raise_signal(signal.SIGTERM)
        return original(module)

    monkeypatch.setattr(train_loop, "collect_auxiliary_losses", signal_during_a_step)
    config = tiny_config(tmp_path, epochs=3, batch_size=256)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config, run_dir=tmp_path / "r")
    assert calls["n"] == stop_at  # not one step more
    err = stopped.value
    assert (err.run_dir, err.step, err.epoch, err.signal_name) == (
        tmp_path / "r", stop_at, 1, "SIGTERM")
    assert str(err) == (f"SIGTERM: stopped at step {stop_at} (epoch 1) after saving a "
                        f"checkpoint; resume with: attnkit train --resume {tmp_path / 'r'}")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert capsys.readouterr().err == ("\nSIGTERM: stopping after this step and saving a "
                                       "checkpoint (send it again to stop at once)\n")
    last = latest_checkpoint(tmp_path / "r" / "checkpoints")
    assert last is not None and last.name == f"step-{stop_at:08d}"
    state = load_checkpoint(last, build_run_model(config, get_task("digits"), None))
    metrics = tmp_path / "r" / "metrics.json"  # written at each epoch's end
    history = json.loads(metrics.read_text())["history"] if metrics.exists() else []
    if at_epoch_end:
        assert (state["epoch"], state["batch"], state["epoch_stats"]["count"]) == (1, 0, 0)
        assert [r["step"] for r in history] == [per_epoch]
    else:
        assert (state["epoch"], state["batch"], state["epoch_stats"]["count"]) == (0, 2, 512)
        assert history == [] and state["train_seconds"] > 0


def test_task_options_and_thread_count_apply_before_anything_is_built(tmp_path: Path) -> None:
    """config.task.options reach the task loader (an unknown one is refused by it, before any
    directory exists); train.num_threads sets torch's thread count first."""
    threads = torch.get_num_threads()
    try:
        with pytest.raises(ValueError, match=r"^task 'digits' has no option 'no_such_option'"):
            train(tiny_config(tmp_path, task_options={"no_such_option": 1}, num_threads=3),
                  run_dir=tmp_path / "r")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "r").exists()


def test_the_progress_display_counts_steps_with_loss_and_lr(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """train.progress on: one display per epoch over its batches, named after the epoch, each
    step's loss and learning rate as its postfix (here the plain-line display, printing at
    every step); off: a silent one. With TensorBoard on, the console says how to open it."""
    import io

    from attnkit.train.progress import PlainProgress

    shown = io.StringIO()
    enabled: list[bool] = []

    def every_step(total: int, desc: str, *, enabled: bool) -> Any:
        displays.append(enabled)
        return PlainProgress(total, desc, every_seconds=0.0, stream=shown)

    displays = enabled
    monkeypatch.setattr(train_loop, "progress_bar", every_step)
    config = tiny_config(tmp_path, epochs=2, batch_size=512, max_steps=4, progress=True,
                         warmup_fraction=0.5, tensorboard=True)
    result = train(config, run_dir=tmp_path / "r")
    assert capsys.readouterr().out.startswith(
        f"run directory: {tmp_path / 'r'}\nTensorBoard: tensorboard --logdir "
        f"{tmp_path / 'r' / 'tensorboard'}\n")
    per_epoch = 3  # digits' training split in batches of 512
    lrs = [warmup_cosine(s, total_steps=2 * per_epoch, peak_lr=config.train.lr,
                         warmup_steps=3, min_lr_ratio=config.train.min_lr_ratio)
           for s in range(4)]
    expected = [f"epoch {e}/2: {n}/{per_epoch} steps, loss={loss:.4f} lr={lr:.2e}"
                for (e, n), loss, lr in zip([(1, 1), (1, 2), (1, 3), (2, 1)],
                                            result.step_losses, lrs, strict=True)]
    assert shown.getvalue().splitlines() == expected
    assert enabled == [True, True]
    enabled.clear()
    train(tiny_config(tmp_path, max_steps=1, progress=False), run_dir=tmp_path / "quiet")
    assert enabled == [False]


def test_a_fine_tuning_run_starts_from_the_checkpoint_in_its_run_directory(
        tmp_path: Path) -> None:
    """A run directory holding only ``hf/`` (as finetune() prepares it) trains the model saved
    there, not one built from config.model."""
    pytest.importorskip("transformers", reason="needs transformers: pip install 'attnkit[hf]'")
    import attnkit.hf
    from attnkit.models import ModelConfig, build_vit
    from attnkit.train.run import HF_FOLDER

    torch.manual_seed(0)
    start = build_vit(ModelConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32, dropout=0.0,
                                  patch_size=4, pooling="cls"),
                      image_shape=(1, 8, 8), num_classes=10)
    run = tmp_path / "ft"
    attnkit.hf.save(start, run / HF_FOLDER)
    shapes = {k: tuple(v.shape) for k, v in attnkit.hf.load(run / HF_FOLDER).state_dict().items()}
    result = train(tiny_config(tmp_path, max_steps=1), run_dir=run)
    trained = load_file(str(run / "checkpoints" / "step-00000001" / "model.safetensors"))
    assert result.steps == 1 and {k: tuple(v.shape) for k, v in trained.items()} == shapes


def test_evaluate_scores_a_split_in_eval_mode_and_restores_the_mode() -> None:
    """evaluate(): the mean cross-entropy (no label smoothing) and accuracy over the whole
    split whatever the batch size, dropout off while scoring, the task's own scores added
    (called with the model in eval mode and its device), the model's mode restored."""
    import dataclasses

    import torch.nn.functional as F

    from attnkit.models import ModelConfig, build_vit
    from attnkit.tasks import get_task
    from attnkit.train.data import iterate

    torch.manual_seed(0)
    model = build_vit(ModelConfig(d_model=16, num_heads=2, num_layers=1, d_ff=32, dropout=0.5,
                                  patch_size=4), image_shape=(1, 8, 8), num_classes=10)
    seen: list[tuple[bool, torch.device]] = []
    task = dataclasses.replace(get_task("digits"), evaluate=lambda m, data, device: (
        seen.append((m.training, device)) or {"extra": float(len(data))}))
    (whole,) = iterate(task.test, batch_size=len(task.test))
    model.eval()
    with torch.no_grad():
        logits = model(whole.inputs)
    loss = float(F.cross_entropy(logits, whole.targets))
    accuracy = float((logits.argmax(-1) == whole.targets).double().mean())
    model.train()
    for batch_size in (7, 1000):
        metrics = train_loop.evaluate(model, task.test, task, batch_size=batch_size)
        assert metrics == {"loss": pytest.approx(loss, rel=1e-5), "accuracy": accuracy,
                           "extra": float(len(task.test))}
        assert model.training
    model.eval()
    train_loop.evaluate(model, task.test, task)
    assert not model.training
    assert seen == [(False, torch.device("cpu"))] * 3


def test_checkpoints_every_few_minutes_inside_an_epoch(tmp_path: Path) -> None:
    """train.checkpoint_minutes reaches the cadence: at a tiny interval every step is due."""
    result = train(tiny_config(tmp_path, epochs=1, max_steps=3, checkpoint_every=0,
                               checkpoint_minutes=1e-9, keep_checkpoints=5),
                   run_dir=tmp_path / "r")
    assert result.steps == 3
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("step-*")) == [
        "step-00000001", "step-00000002", "step-00000003"]
