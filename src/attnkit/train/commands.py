"""CLI commands of the training area: ``train``, ``eval``, ``generate``, ``demo``.

Thin: each parses its options and calls library functions (:func:`attnkit.train.train`,
:func:`attnkit.train.load_run`, :func:`attnkit.train.evaluate`, model ``generate``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from attnkit.cli_options import add_device_option
from attnkit.errors import UsageError

__all__ = ["register"]

_TRAIN_EPILOG = """\
examples:
  attnkit train --task digits --model vit --attention gated
  attnkit train --config cfg.yaml --set train.lr=1e-3 --set model.num_layers=4
  attnkit train --resume runs/digits-vit-20261127-180000 --set train.epochs=60

config file (YAML), every section optional:
  task:  {name: digits, options: {}}
  model: {family: vit, d_model: 64, attention: mha, ...}    # ModelConfig fields
  train: {epochs: 40, lr: 0.003, batch_size: 64, ...}       # TrainConfig fields
  preset: vit_tiny_digits
"""


def _is_main_process() -> bool:
    """Under torchrun only rank 0 prints results."""
    return os.environ.get("RANK", "0") == "0"


def _shortcut_overrides(args: argparse.Namespace) -> list[str]:
    pairs = [("task", "task.name"), ("model", "model.family"), ("preset", "preset"),
             ("epochs", "train.epochs"), ("batch_size", "train.batch_size"),
             ("lr", "train.lr"), ("seed", "train.seed"), ("device", "train.device"),
             ("out_dir", "out_dir"), ("name", "name")]
    out = [f"{key}={getattr(args, attr)}" for attr, key in pairs
           if getattr(args, attr) is not None]
    if args.attention is not None:
        kinds = [k.strip() for k in args.attention.split(",") if k.strip()]
        out.append(f"model.attention={kinds[0] if len(kinds) == 1 else json.dumps(kinds)}")
    if args.no_progress:
        out.append("train.progress=false")
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from attnkit.train.config import (
        apply_overrides,
        load_yaml,
        resolve_for_task,
        run_config_from_dict,
    )
    from attnkit.train.loop import train

    overrides = _shortcut_overrides(args) + list(args.set or [])
    if args.resume:
        run_dir = Path(args.resume)
        if args.config:
            raise UsageError("--resume takes the config from the run directory; drop --config "
                             "(change settings with --set KEY=VALUE)")
        if args.overwrite:
            raise UsageError("--overwrite starts a new run; it cannot be combined with --resume")
        if not (run_dir / "config.yaml").is_file():
            raise UsageError(f"nothing to resume: {str(run_dir)!r} is not a run directory (no "
                             f"config.yaml)")
        # The merged config is validated in full before train() writes anything.
        raw = apply_overrides(load_yaml(run_dir / "config.yaml"), overrides)
        config = run_config_from_dict(raw)
        result = train(config, run_dir=run_dir, resume=True)
    else:
        raw = apply_overrides(load_yaml(args.config) if args.config else {}, overrides)
        config, task = resolve_for_task(raw)
        result = train(config, task=task, overwrite=args.overwrite)
    if _is_main_process():
        print(json.dumps({"run_dir": str(result.run_dir), "test": result.test}, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from attnkit.train.loop import evaluate
    from attnkit.train.run import load_run

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    run = load_run(args.run_dir, weights=args.weights, device=args.device)
    dataset = getattr(run.task, args.split)
    metrics = evaluate(run.model, dataset, run.task, batch_size=args.batch_size)
    print(json.dumps({"run_dir": str(run.run_dir), "split": args.split,
                      "weights": str(run.weights), "metrics": metrics}, indent=2))
    return 0


def _encode_prompt(task: Any, prompt: str) -> list[int]:
    """The prompt's ids; characters the vocabulary lacks are an error, never the pad id."""
    try:
        ids = list(task.encode(prompt))
    except (ValueError, KeyError, IndexError) as err:
        raise UsageError(f"--prompt {prompt!r} is not in task {task.name!r}'s input format: "
                         f"{err}{_prompt_example(task)}") from None
    if not ids:
        raise UsageError("the prompt encodes to no tokens; give a non-empty --prompt")
    if task.pad_id in ids:
        unknown = sorted({c for c in prompt if task.pad_id in task.encode(c)})
        raise UsageError(f"--prompt has characters outside task {task.name!r}'s vocabulary: "
                         f"{unknown}; remove them")
    return ids


def _prompt_example(task: Any) -> str:
    decode = task.extra.get("source_decode")
    if decode is None and task.target_vocab_size in (None, task.vocab_size):
        decode = task.decode  # source and target share one vocabulary
    if decode is None or not len(task.test):
        return ""
    source = task.test[0][0]
    return f"; e.g. --prompt {decode([int(i) for i in source]).strip()!r}"


_SAMPLING_DEFAULTS = {"temperature": 0.0, "top_k": None, "top_p": None, "cache": "static",
                      "window": None, "sink": None}


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from attnkit.models import DecoderLM, SamplingConfig, Seq2SeqTransformer, set_weight_layout
    from attnkit.train.run import load_run

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    run = load_run(args.run_dir, device=args.device)
    task, model = run.task, run.model
    if task.encode is None or task.decode is None:
        raise UsageError(f"task {task.name!r} has no text encode/decode; generate works for "
                         f"language-model and seq2seq tasks over text")
    device = next(model.parameters()).device
    prompt = torch.tensor([_encode_prompt(task, args.prompt)], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    never = tuple(i for i in (task.pad_id, task.bos_id) if i is not None)
    if isinstance(model, DecoderLM):
        try:
            sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k,
                                      top_p=args.top_p, suppress_ids=never)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if prompt.device.type == "cpu":  # faster CPU decode steps (models.weight_layout)
            set_weight_layout(model, "input_major")
        out = model.generate(prompt, max_new_tokens=args.max_new_tokens, sampling=sampling,
                             cache=args.cache, window=args.window,
                             sink=4 if args.sink is None else args.sink,
                             eos_id=task.eos_id, generator=generator)
        print(task.decode(out[0].tolist()))
    elif isinstance(model, Seq2SeqTransformer):
        ignored = [f"--{k.replace('_', '-')}" for k, default in _SAMPLING_DEFAULTS.items()
                   if getattr(args, k) != default]
        if ignored:
            raise UsageError(f"{', '.join(ignored)}: seq2seq runs decode greedily and use no "
                             f"sampling or cache options; drop them")
        if task.bos_id is None or task.eos_id is None:
            raise UsageError(f"task {task.name!r} sets no bos_id / eos_id for decoding")
        if args.beam_size > 1:
            out = model.beam_decode(prompt, bos_id=task.bos_id, eos_id=task.eos_id,
                                    max_length=args.max_new_tokens, beam_size=args.beam_size,
                                    length_penalty=args.length_penalty)
        else:
            out = model.greedy_decode(prompt, bos_id=task.bos_id, eos_id=task.eos_id,
                                      max_length=args.max_new_tokens, suppress_ids=never)
        tokens = [t for t in out[0, 1:].tolist() if t != task.eos_id]
        print(task.decode(tokens))
    else:
        raise UsageError(f"run {str(run.run_dir)!r} holds a {type(model).__name__}; generate "
                         f"needs a language model (decoder) or seq2seq run")
    return 0


def register(subparsers: Any) -> None:
    """Add ``train``, ``eval`` and ``generate`` to the ``attnkit`` command."""
    p = subparsers.add_parser(
        "train", help="train a model on a task", epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model (any family, any attention kind per layer) on a task. "
                    "Writes RUN_DIR with config.yaml, checkpoints/, best/, metrics.json and "
                    "TensorBoard logs. Under torchrun it trains data-parallel.")
    p.add_argument("--config", metavar="FILE", help="YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. train.lr=1e-3 (repeatable)")
    p.add_argument("--task", help="task name (attnkit.tasks.list_tasks(); default digits)")
    p.add_argument("--model", help="model family: vit, encoder, audio, decoder, seq2seq "
                   "(default: from the task)")
    p.add_argument("--preset", help="model preset fixing the numbers (e.g. vit_tiny_digits, "
                   "classic_base, lm_small)")
    p.add_argument("--attention", metavar="KIND[,KIND...]",
                   help="attention kind for every layer, or one per layer (comma-separated)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    add_device_option(p, default=None, default_text="the config's train.device, auto")
    p.add_argument("--out-dir", dest="out_dir", help="parent of run directories (default runs)")
    p.add_argument("--name", help="run directory name")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue RUN_DIR from its newest intact checkpoint (--set may change "
                        "budgets such as train.epochs; not the task or architecture)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory of the same --name")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_train)

    p = subparsers.add_parser("eval", help="evaluate a trained run",
                              description="Evaluate a run's best weights on a split; prints "
                                          "JSON metrics.")
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="default test")
    p.add_argument("--weights", default="best", choices=["best", "latest"])
    p.add_argument("--batch-size", type=int, default=256, dest="batch_size")
    add_device_option(p, default="cpu")
    p.set_defaults(handler=_cmd_eval)

    p = subparsers.add_parser("generate", help="generate text from a trained LM / seq2seq run",
                              description="Continue a prompt with a language-model run (greedy, "
                                          "temperature, top-k, top-p; KV cache or streaming "
                                          "rolling cache) or translate it with a seq2seq run "
                                          "(greedy, or beam search with --beam-size).")
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=200, dest="max_new_tokens")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); language models only")
    p.add_argument("--top-k", type=int, dest="top_k", help="language models only")
    p.add_argument("--top-p", type=float, dest="top_p", help="language models only")
    p.add_argument("--cache", default="static", choices=["static", "rolling", "none"],
                   help="language models only")
    p.add_argument("--window", type=int, help="rolling cache: recent tokens kept")
    p.add_argument("--sink", type=int, help="rolling cache: first tokens kept (default 4)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_device_option(p, default="cpu")
    p.add_argument("--beam-size", type=int, default=1, dest="beam_size",
                   help="seq2seq: beam width (1 = greedy, the default)")
    p.add_argument("--length-penalty", type=float, default=1.0, dest="length_penalty",
                   help="seq2seq beam search: rank by log p / length ** this (0 = total log p)")
    p.set_defaults(handler=_cmd_generate)
