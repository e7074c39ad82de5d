"""``--hf PATH`` on the normal commands: ``explain``, ``faithfulness``, ``eval``, ``generate``
and ``train`` take a Hugging Face checkpoint folder (or a run directory) instead of RUN_DIR.

    attnkit explain --hf ./bert --text "the cat sat"      # the folder's tokenizer
    attnkit explain --hf ./vit --image cat.png            # the folder's image processor
    attnkit faithfulness --hf ./vit --images photos/      # or --texts FILE, or --task NAME
    attnkit generate --hf ./gpt2 --prompt "Once upon"
    attnkit eval --hf ./vit --task digits
    attnkit train --hf ./vit --task digits --epochs 3     # fine-tune; RUN_DIR/hf-best is HF

This module is registered after the areas' own commands: it adds the option to their parsers
and routes a call with ``--hf`` here, leaving every other call to the area's own handler.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attnkit.hf.load import load

__all__ = ["register"]

Handler = Callable[[argparse.Namespace], int]


def _device(args: argparse.Namespace) -> Any:
    """The command's ``--device`` checked (a clear error for an unknown or absent device)."""
    from attnkit.train.distributed import pick_device

    return pick_device(getattr(args, "device", None) or "cpu")


def _load_on_device(args: argparse.Namespace) -> Any:
    """The ``--hf`` checkpoint as an attnkit model on the command's ``--device``."""
    return load(args.hf).to(_device(args))


def _is_run_dir(path: str) -> bool:
    return (Path(path) / "config.yaml").is_file()


def _explain(args: argparse.Namespace) -> int:
    from attnkit.explain.one_call import explain
    from attnkit.hf.preprocess import load_image, load_image_processor, load_tokenizer

    if not (args.image or args.text):
        raise ValueError("--hf needs --text \"...\" (text models) or --image FILE (ViT)")
    out = Path(args.out) if args.out else Path(args.hf) / "explain.html"
    model = _load_on_device(args)
    if args.image:
        pixels = load_image(args.image, load_image_processor(args.hf))
        report = explain(model, pixels, method=args.method, top_k=args.top_k,
                         title=f"{Path(args.hf).name} · {Path(args.image).name}")
    else:
        report = explain(model, args.text, tokenizer=load_tokenizer(args.hf),
                         method=args.method, top_k=args.top_k,
                         title=f"{Path(args.hf).name} · {args.text!r}")
    print(report.save(out))
    if args.png and report.example is not None:
        from attnkit.explain.commands import write_pngs

        for path in write_pngs(model, report.example, Path(args.png)):
            print(path)
    return 0


def _faithfulness(args: argparse.Namespace) -> int:
    from attnkit.explain.pretrained_faithfulness import faithfulness_markdown

    table = faithfulness_markdown(args.hf, task=args.task, images=args.images, texts=args.texts,
                                  examples=args.examples, steps=args.steps,
                                  device=_device(args))
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from attnkit.hf.fit import check_fits_task
    from attnkit.tasks import get_task
    from attnkit.train.loop import evaluate

    if not args.task:
        raise ValueError("--hf needs --task NAME: the task whose split to evaluate on")
    model, task = _load_on_device(args), get_task(args.task)
    check_fits_task(model, task)
    metrics = evaluate(model, getattr(task, args.split), task, batch_size=args.batch_size)
    print(json.dumps({"hf": args.hf, "task": task.name, "split": args.split,
                      "metrics": metrics}, indent=2))
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from attnkit.explain.one_call import tokenize
    from attnkit.hf.preprocess import load_tokenizer
    from attnkit.models import DecoderLM, SamplingConfig, set_weight_layout

    model = _load_on_device(args)
    if not isinstance(model, DecoderLM):
        raise ValueError(f"{args.hf!r} holds a {type(model).__name__}; generate needs a "
                         f"language model (GPT-2)")
    tokenizer = load_tokenizer(args.hf)
    ids, _ = tokenize(tokenizer, args.prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give a non-empty --prompt")
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    eos = getattr(tokenizer, "eos_token_id", None)
    prompt = torch.tensor([ids], device=next(model.parameters()).device)
    if prompt.device.type == "cpu":
        set_weight_layout(model, "input_major")  # faster CPU decode steps (models.weight_layout)
    out = model.generate(prompt, max_new_tokens=args.max_new_tokens,
                         sampling=sampling, cache=args.cache, window=args.window,
                         sink=args.sink, eos_id=eos,
                         generator=torch.Generator().manual_seed(args.seed))
    print(tokenizer.decode(out[0].tolist()))
    return 0


def _train(args: argparse.Namespace) -> int:
    from attnkit.train.finetune import finetune

    if not args.task:
        raise ValueError("--hf needs --task NAME: the task to fine-tune on")
    if args.config or args.resume or args.model or args.preset or args.attention:
        raise ValueError("--hf fixes the model: drop --config/--resume/--model/--preset/"
                         "--attention (resume a fine-tuning run with --resume RUN_DIR alone)")
    pairs = [("epochs", "train.epochs"), ("batch_size", "train.batch_size"), ("lr", "train.lr"),
             ("seed", "train.seed"), ("device", "train.device"), ("out_dir", "out_dir")]
    overrides = [f"{key}={getattr(args, attr)}" for attr, key in pairs
                 if getattr(args, attr, None) is not None] + list(args.set or [])
    if args.no_progress:
        overrides.append("train.progress=false")
    result = finetune(args.hf, task=args.task, overrides=overrides, name=args.name)
    print(json.dumps({"run_dir": str(result.run_dir), "test": result.test,
                      "hf": str(Path(result.run_dir) / "hf-best")}, indent=2))
    return 0


def _route(hf_handler: Handler, own: Handler | None, needs_run_dir: bool
           ) -> Handler:
    def handle(args: argparse.Namespace) -> int:
        if getattr(args, "hf", None):
            if getattr(args, "run_dir", None):
                raise ValueError("give RUN_DIR or --hf PATH, not both")
            if needs_run_dir and own is not None and _is_run_dir(args.hf):
                args.run_dir = args.hf  # a run directory: the command's own path
                return own(args)
            return hf_handler(args)
        if needs_run_dir and not getattr(args, "run_dir", None):
            raise ValueError("give RUN_DIR (a run of 'attnkit train') or --hf PATH (a Hugging "
                             "Face checkpoint folder)")
        if own is None:
            raise ValueError("this command needs --hf PATH here")
        return own(args)
    return handle


_HELP = "a Hugging Face checkpoint folder (config.json + model.safetensors) or a run directory"


def register(subparsers: Any) -> None:
    """Add ``--hf`` (and its input options) to the commands other areas registered."""
    choices: dict[str, argparse.ArgumentParser] = subparsers.choices
    routes: dict[str, tuple[Handler, bool]] = {
        "explain": (_explain, True), "faithfulness": (_faithfulness, True),
        "eval": (_eval, True), "generate": (_generate, True), "train": (_train, False)}
    for name, (handler, needs_run_dir) in routes.items():
        parser = choices.get(name)
        if parser is None:
            continue
        parser.add_argument("--hf", metavar="PATH", help=_HELP)
        parser.set_defaults(handler=_route(handler, parser.get_default("handler"),
                                           needs_run_dir))
    if "explain" in choices:
        choices["explain"].add_argument("--image", metavar="FILE",
                                        help="with --hf: explain this image (ViT)")
    if "faithfulness" in choices:
        f = choices["faithfulness"]
        f.add_argument("--task", help="with --hf: a task whose test split fits the model")
        f.add_argument("--images", metavar="DIR", help="with --hf: image files (ViT)")
        f.add_argument("--texts", metavar="FILE", help="with --hf: one text per line (BERT)")
    if "eval" in choices:
        choices["eval"].add_argument("--task", help="with --hf: the task to evaluate on")
