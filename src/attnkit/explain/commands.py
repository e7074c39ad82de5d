"""``attnkit explain RUN_DIR``: an HTML report (and optional PNGs) of a trained run.

    attnkit explain runs/digits-vit-... --input test:3 --method rollout --out report.html

:func:`write_demo_report` is what ``attnkit demo`` (:mod:`attnkit.demo`) calls after training.
"""

from __future__ import annotations

import argparse
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

from attnkit.cli_options import add_device_option
from attnkit.explain.report import METHODS

__all__ = ["explain_run", "faithfulness_report", "register", "write_demo_report"]


def _example(run: Any, spec: str, text: str | None) -> Any:
    from attnkit.explain.examples import example_from_task, parse_input_spec

    task = run.task
    title = f"{task.name} · {run.run_dir.name}"
    if text is not None:
        if task.encode is None:
            raise ValueError(f"task {task.name!r} has no text encoder; use --input split:index")
        import torch

        source = torch.tensor(task.encode(text))
        target = None
        if task.kind == "seq2seq":  # explain the model's own translation of the text
            decode = getattr(run.model, "greedy_decode", None)
            if decode is None or task.bos_id is None or task.eos_id is None:
                raise ValueError("--text on a seq2seq run needs a model with greedy_decode and "
                                 "a task with bos/eos ids; use --input split:index")
            device = next(run.model.parameters()).device
            target = decode(source[None].to(device), bos_id=task.bos_id, eos_id=task.eos_id,
                            max_length=2 * len(source) + 10)[0].cpu()
        example = example_from_task(run.model, task, source, target,
                                    title=f"{title} · --text ({len(text):,} characters)")
        example.text = text
        return example
    split, index = parse_input_spec(spec)
    dataset = cast(Sized, getattr(task, split))
    if not -len(dataset) <= index < len(dataset):
        raise ValueError(f"--input {spec}: the {split} split has {len(dataset)} examples")
    x, y = getattr(task, split)[index]
    return example_from_task(run.model, task, x, y, title=f"{title} · {spec}")


def explain_run(run_dir: str | Path, *, input_spec: str = "test:0", text: str | None = None,
                method: str = "raw", out: str | Path | None = None,
                png_dir: str | Path | None = None, top_k: int = 8, device: str = "cpu") -> Path:
    """Write the HTML report of one example of a run; returns its path.

    ``method`` is shown first; the other per-layer views stay in the page's method menu.
    ``device``: where the model runs (``cpu``, ``cuda``, ``cuda:1``, ``auto``...).
    """
    from attnkit.explain.render_html import write_html
    from attnkit.explain.report import build_report
    from attnkit.train import load_run

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    run = load_run(run_dir, device=device)
    example = _example(run, input_spec, text)
    order = [method, *[m for m in METHODS if m != method]]
    report = build_report(run.model, example, methods=order, top_k=top_k)
    target = Path(out) if out is not None else Path(run_dir) / "explain.html"
    path = write_html(target, **report)
    if png_dir is not None:
        write_pngs(run.model, example, Path(png_dir))
    return path


def write_pngs(model: Any, example: Any, folder: Path) -> list[Path]:
    """Static views of one example: layer x head grid, last layer's heads, attribution."""
    import torch

    from attnkit.explain import capture, gradient_relevance
    from attnkit.explain.render_png import (
        plot_audio_strip,
        plot_head_heatmaps,
        plot_image_overlay,
        plot_layer_grid,
        plot_token_highlight,
    )

    with torch.no_grad(), capture(model) as cap:
        model(*example.inputs)
    records = cap.self_attention()
    labels = example.labels["input"]
    written = [
        plot_layer_grid([r.dense_weights()[0] for r in records], folder / "layers_heads.png",
                        layer_names=[r.name for r in records], title=example.title),
        plot_head_heatmaps(records[-1].dense_weights()[0], folder / "last_layer_heads.png",
                           query_labels=labels, key_labels=labels, title=records[-1].name)]
    row = -1 if example.explained_row is None else example.explained_row
    relevance = gradient_relevance(model, *example.inputs, position=row)
    matrix = relevance.cross[0] if relevance.cross is not None else relevance.source[0]
    scores = (matrix.mean(0) if example.explained_row is None else matrix[row])
    scores = scores[example.first_input:]
    first = example.inputs[0][0]
    if example.image is not None and example.grid is not None:
        written.append(plot_image_overlay(example.image, scores.reshape(example.grid),
                                          folder / "relevance_overlay.png",
                                          title="gradient relevance"))
    elif first.is_floating_point() and first.dim() == 2:
        written.append(plot_audio_strip(first, scores, folder / "relevance_frames.png"))
    else:
        written.append(plot_token_highlight(labels[example.first_input:] if relevance.cross
                                            is None else labels, scores,
                                            folder / "relevance_tokens.png",
                                            title="gradient relevance"))
    return written


def write_demo_report(run_dir: str | Path) -> Path:
    """The HTML report of the first test example of a trained run (``attnkit demo`` calls it)."""
    return explain_run(run_dir, input_spec="test:0", method="raw",
                       out=Path(run_dir) / "explain.html")


def faithfulness_report(run_dir: str | Path, *, examples: int = 300, steps: int = 16,
                        random_repeats: int = 5, sanity_examples: int = 32,
                        device: str = "cpu") -> str:
    """Markdown: perturbation AUCs of each method vs random, and the randomization check.

    ``device``: where the model runs (``cpu``, ``cuda``, ``cuda:1``, ``auto``...)."""
    import torch

    from attnkit.explain.examples import example_from_task
    from attnkit.explain.faithfulness import (
        evaluate_faithfulness,
        format_table,
        patch_explanations,
        sanity_table,
    )
    from attnkit.train import load_run

    run = load_run(run_dir, device=device)
    task = run.task
    if task.modality != "image":
        raise ValueError(f"the faithfulness table is for image (ViT) runs; {task.name!r} is "
                         f"{task.modality}")
    count = min(examples, len(cast(Sized, task.test)))
    pairs = [task.test[i] for i in range(count)]
    where = next(run.model.parameters()).device
    images = torch.stack([torch.as_tensor(x) for x, _ in pairs]).to(where)
    labels = torch.tensor([int(y) for _, y in pairs], device=where)
    example = example_from_task(run.model, task, images[0])
    if example.grid is None or example.first_input not in (0, 1):
        raise ValueError(f"the faithfulness table needs a ViT run (class token or mean "
                         f"pooling); {str(run.run_dir)!r} holds a {type(run.model).__name__}")
    methods = patch_explanations(example.grid, class_token=example.first_input == 1)
    background = float(images.amin())
    rows = evaluate_faithfulness(run.model, images, labels, grid=example.grid, steps=steps,
                                 random_repeats=random_repeats, background=background,
                                 methods=methods)
    sanity = sanity_table(run.model, images[:sanity_examples], grid=example.grid,
                          methods={k: v for k, v in methods.items() if "flow" not in k})
    with torch.no_grad():
        accuracy = float((run.model(images).argmax(-1) == labels).float().mean())
    blocks = [step.block for step in next(iter(sanity.values()))]
    lines = [f"run: {run.run_dir} ({task.name}, test accuracy on these {count} images "
             f"{accuracy:.3f}); {example.grid[0]}x{example.grid[1]} patches blanked to "
             f"{background:g} in {steps} steps", "", format_table(rows), "",
             f"cascading randomization: Spearman correlation with the original map after "
             f"randomizing every block from the output down to the named one "
             f"({min(sanity_examples, count)} images):", "",
             "| method | " + " | ".join(f"down to {b}" for b in blocks) + " |",
             "|---|" + "---:|" * len(blocks)]
    lines += [f"| {name} | " + " | ".join(f"{s.spearman:.2f}" for s in steps) + " |"
              for name, steps in sanity.items()]
    return "\n".join(lines)


def _cmd_faithfulness(args: argparse.Namespace) -> int:
    table = faithfulness_report(args.run_dir, examples=args.examples, steps=args.steps,
                                device=args.device)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    path = explain_run(args.run_dir, input_spec=args.input, text=args.text, method=args.method,
                       out=args.out, png_dir=args.png, top_k=args.top_k, device=args.device)
    print(path)
    return 0


def register(subparsers: Any) -> None:
    """Add ``explain`` and ``faithfulness`` to the ``attnkit`` command."""
    p = subparsers.add_parser(
        "explain", help="interactive HTML report of a trained run's attention",
        description="Capture the attention of one example, compute rollout, gradient "
                    "relevance (Chefer et al. 2021), attention flow and input x gradient, and "
                    "write one self-contained HTML file (works offline).")
    p.add_argument("run_dir", nargs="?", help="a run directory written by 'attnkit train'")
    p.add_argument("--input", default="test:0", metavar="SPLIT:INDEX",
                   help="which example to explain (default test:0)")
    p.add_argument("--text", help="explain this text instead (text tasks)")
    p.add_argument("--method", default="raw", choices=METHODS,
                   help="per-layer view shown first (all stay selectable in the page)")
    p.add_argument("--out", help="output HTML path (default RUN_DIR/explain.html)")
    p.add_argument("--png", metavar="DIR", help="also write static PNG views into DIR")
    p.add_argument("--top-k", type=int, default=8, dest="top_k",
                   help="links kept per query row for long inputs (default 8)")
    add_device_option(p, default="cpu")
    p.set_defaults(handler=_cmd_explain)
    f = subparsers.add_parser(
        "faithfulness", help="perturbation AUCs of each explanation method of a ViT run",
        description="Blank image patches in the order each method ranks them and track "
                    "accuracy / class probability (positive, negative, deletion, insertion "
                    "AUC) against a random order; plus the cascading randomization check.")
    f.add_argument("run_dir", nargs="?", help="a ViT run directory written by 'attnkit train'")
    f.add_argument("--examples", type=int, default=300, help="test images used (default 300)")
    f.add_argument("--steps", type=int, default=16, help="perturbation steps (default 16)")
    f.add_argument("--out", help="also write the markdown table here")
    add_device_option(f, default="cpu")
    f.set_defaults(handler=_cmd_faithfulness)
