"""Fine-tuning a Hugging Face checkpoint on an attnkit task: ``finetune(path, task=...)``.

    result = attnkit.train.finetune.finetune("path/to/vit", task="digits",
                                             overrides=["train.epochs=3"])
    # result.run_dir/hf        the starting point (head resized to the task's classes)
    # result.run_dir/hf-best   the fine-tuned model, a folder transformers loads

The run is a normal attnkit run (``attnkit eval/explain/generate RUN_DIR`` work on it): its
``hf/`` folder fixes the architecture, the usual checkpoints hold the weights. The task's
inputs must fit the checkpoint: its token ids inside the vocabulary (text tasks use the task's
own tokenizer), its images of the checkpoint's channels and size.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from attnkit.hf.fit import check_fits_task, copy_preprocessing, fit_head, model_family
from attnkit.hf.load import load
from attnkit.hf.save import save
from attnkit.train.config import apply_overrides, resolve_for_task
from attnkit.train.loop import train
from attnkit.train.run import HF_FOLDER, load_run

__all__ = ["finetune"]


def finetune(source: str | os.PathLike[str], *, task: str,
             overrides: list[str] | None = None, name: str | None = None) -> Any:
    """Train the checkpoint at ``source`` (a Hugging Face folder or an attnkit run directory)
    on ``task``; returns the TrainResult.

    ``overrides``: ``KEY=VALUE`` run settings as for ``attnkit train --set`` (train.* and
    out_dir; model numbers come from the checkpoint). Single process (no torchrun).
    """
    source = Path(source)
    is_run = (source / "config.yaml").is_file()  # an attnkit run directory as the start
    model = load_run(source).model if is_run else load(source)
    raw = apply_overrides({"task": {"name": task}}, overrides or [])
    bad = [k for k in (raw.get("model") or {}) if k != "family"]
    if bad:
        raise ValueError(f"model.* settings {bad} do not apply: the checkpoint fixes the model")
    raw.setdefault("model", {})["family"] = model_family(model)
    config, loaded_task = resolve_for_task(raw)
    check_fits_task(model, loaded_task)
    if loaded_task.num_classes:
        fit_head(model, loaded_task.num_classes)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config.out_dir) / (name or config.name or
                                      f"{loaded_task.name}-hf-{source.name}-{stamp}")
    if (run_dir / HF_FOLDER).exists():
        raise ValueError(f"{str(run_dir)!r} already holds a fine-tuning run; pick another name")
    save(model, run_dir / HF_FOLDER)
    copy_preprocessing(source, run_dir / HF_FOLDER)
    result = train(config, task=loaded_task, run_dir=run_dir)
    best = save(load_run(run_dir).model, run_dir / "hf-best")
    copy_preprocessing(source, best)
    return result
