"""``attnkit bench compile``: eager vs ``torch.compile`` speed of the demo-sized models.

For each family (the demo ViT on 8x8 digits, the small encoder classifier, the small character
LM) the eager and the compiled model run side by side: forward (eval, no grad) and one training
step (forward, backward, SGD update), alternating eager and compiled calls so that load on a
shared machine hits both alike; the median of ``repeats`` rounds is reported with the ratio
and the one-off compile time. Writes ``compile.csv`` and ``compile.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from attnkit.bench.harness import format_table, time_call, write_csv
from attnkit.models import (
    build_decoder_lm,
    build_encoder_classifier,
    build_vit,
    get_preset,
)

__all__ = ["COMPILE_FAMILIES", "compile_speed", "register"]


def _vit(batch: int) -> tuple[nn.Module, tuple[Tensor, ...]]:
    config = get_preset("vit_tiny_digits")
    return (build_vit(config, image_shape=(1, 8, 8), num_classes=10),
            (torch.randn(batch, 1, 8, 8),))


def _encoder(batch: int) -> tuple[nn.Module, tuple[Tensor, ...]]:
    config = get_preset("encoder_small")
    return (build_encoder_classifier(config, vocab_size=64, num_classes=10),
            (torch.randint(1, 64, (batch, 128)),))


def _decoder(batch: int) -> tuple[nn.Module, tuple[Tensor, ...]]:
    config = get_preset("lm_small")
    return build_decoder_lm(config, vocab_size=65), (torch.randint(0, 65, (batch, 128)),)


#: family -> (what it is, builder of (model, inputs) for a batch size)
COMPILE_FAMILIES: dict[str, tuple[str, Callable[[int], tuple[nn.Module, tuple[Tensor, ...]]]]] = {
    "vit": ("vit_tiny_digits, 8x8 images (4 tokens)", _vit),
    "encoder": ("encoder_small, 128 tokens", _encoder),
    "decoder": ("lm_small, 128 tokens", _decoder),
}


def _forward(model: nn.Module, inputs: tuple[Tensor, ...]) -> Callable[[], None]:
    def forward() -> None:
        with torch.no_grad():
            model(*inputs)

    return forward


def _train_step(model: nn.Module, inputs: tuple[Tensor, ...]) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(*inputs).float().square().mean().backward()
        optimizer.step()

    return step


def _side_by_side(eager: Callable[[], Any], compiled: Callable[[], Any], repeats: int
                  ) -> tuple[float, float, float]:
    """(compile + first call seconds, eager median, compiled median), calls alternating."""
    start = time.perf_counter()
    compiled()
    first = time.perf_counter() - start
    eager()
    compiled()  # a second call: some graphs recompile once (e.g. for grad mode)
    eager_times, compiled_times = [], []
    for _ in range(repeats):
        eager_times.append(time_call(eager))
        compiled_times.append(time_call(compiled))
    return first, statistics.median(eager_times), statistics.median(compiled_times)


def compile_speed(*, families: list[str] | None = None, batch: int = 32, repeats: int = 7,
                  mode: str | None = None, threads: int | None = None,
                  backend: str = "inductor") -> list[dict[str, Any]]:
    """Rows of eager vs compiled time per family and pass (forward, train step).

    ``backend`` / ``mode``: passed to ``torch.compile`` (Inductor generates C++ on CPU)."""
    if threads is not None:
        torch.set_num_threads(threads)
    rows = []
    for family in families or list(COMPILE_FAMILIES):
        if family not in COMPILE_FAMILIES:
            raise ValueError(f"unknown family {family!r}; choose from {list(COMPILE_FAMILIES)}")
        what, build = COMPILE_FAMILIES[family]
        torch.manual_seed(0)
        model, inputs = build(batch)
        twin = build(batch)[0]
        twin.load_state_dict(model.state_dict())
        # torch.compile of a module returns an OptimizedModule (an nn.Module sharing twin's
        # parameters); the twin keeps the two optimizers' updates apart.
        compiled_model = cast(nn.Module, torch.compile(twin, mode=mode, backend=backend))
        passes = [("forward", _forward(model, inputs), _forward(compiled_model, inputs)),
                  ("train step", _train_step(model, inputs), _train_step(compiled_model, inputs))]
        for name, eager_fn, compiled_fn in passes:
            model.train(name != "forward")
            twin.train(name != "forward")
            first, eager_s, compiled_s = _side_by_side(eager_fn, compiled_fn, repeats)
            rows.append({"family": family, "model": what, "pass": name, "batch": batch,
                         "eager_ms": eager_s * 1e3, "compiled_ms": compiled_s * 1e3,
                         "speedup": eager_s / compiled_s, "compile_s": first,
                         "repeats": repeats})
    return rows


COLUMNS = ["family", "model", "pass", "batch", "eager_ms", "compiled_ms", "speedup", "compile_s"]


def _markdown(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(
        f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS) + " |\n"
        for r in rows)
    return head + body


def _cmd(args: argparse.Namespace) -> int:
    rows = compile_speed(families=args.family, batch=args.batch, repeats=args.repeats,
                         mode=args.mode, threads=args.threads)
    print(format_table(rows, COLUMNS))
    out = Path(args.out)
    write_csv(out / "compile.csv", rows)
    (out / "compile.md").write_text(_markdown(rows))
    print(f"wrote {out / 'compile.csv'} and {out / 'compile.md'}")
    return 0


def register(suites: Any) -> None:
    """Add ``attnkit bench compile``."""
    p = suites.add_parser("compile", help="eager vs torch.compile speed of the demo models",
                          description=__doc__.split("\n\n", 1)[1] if __doc__ else None)
    p.add_argument("--family", action="append", choices=list(COMPILE_FAMILIES),
                   help="family to time (repeatable; default all)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7, help="alternating rounds (median)")
    p.add_argument("--mode", default=None,
                   help="torch.compile mode (default, reduce-overhead, max-autotune)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", default="runs/bench-compile", help="folder for CSV and Markdown")
    p.set_defaults(handler=_cmd)
