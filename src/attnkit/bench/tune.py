"""``attnkit bench tune``: re-measure the important tuning constants on this machine.

Each constant is timed at a few candidate values, side by side (the candidates alternate inside
every round, so a machine whose speed drifts moves all of them alike), and the candidate with the
smallest median wins. The winners go to the tuning file that the engine reads at first use
(:mod:`attnkit.backends.tuning`: ``$ATTNKIT_TUNING`` or the user config directory). Constants
that are not measured keep their defaults.

Measured (quick: L = 4096; ``--full``: L = 16384, more repeats):

- ``band_block``: forward of a sliding window (widths 65 and 257) on the band plan;
- ``band_block_backward``: forward + backward of a 513-wide sliding window;
- ``fused_block_q`` = ``fused_block_k``: forward of ``causal() & padding(...)`` on the tile plan;
- ``kernel_noncausal_chunk``: forward of a non-causal Performer layer.

Shape legend: B batch, H heads, L length, D head dim.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnkit import masks
from attnkit.backends import tuning
from attnkit.bench.harness import time_call
from attnkit.engine import attention
from attnkit.layers import build_attention

__all__ = ["Choice", "TuneConfig", "register", "run_tune"]


@dataclass(frozen=True)
class TuneConfig:
    """What ``bench tune`` measures; the defaults are the quick run (a minute or two)."""

    length: int = 4096  # sequence length of every measurement
    heads: int = 8  # attention heads (D = 64, batch 1)
    repeats: int = 3  # rounds; each round times every candidate once (median reported)
    band_blocks: tuple[int, ...] = (16, 32, 64, 128)
    band_blocks_backward: tuple[int, ...] = (32, 64, 128, 256)
    fused_tiles: tuple[int, ...] = (64, 128, 256)
    noncausal_chunks: tuple[int, ...] = (256, 512, 1024)
    threads: int = 1  # torch threads during the measurements


@dataclass
class Choice:
    """One constant: the median seconds of each candidate and the winner."""

    name: str
    seconds: dict[int, float] = field(default_factory=dict)

    @property
    def best(self) -> int:
        return min(self.seconds, key=lambda c: self.seconds[c])


def _side_by_side(name: str, candidates: Sequence[int], repeats: int,
                  run: Callable[[int], Callable[[], Any]]) -> Choice:
    """Median seconds of ``run(c)()`` per candidate, the candidates alternating in each round
    (after one untimed warm-up call each)."""
    calls = {c: run(c) for c in candidates}
    for fn in calls.values():
        fn()
    times: dict[int, list[float]] = {c: [] for c in candidates}
    for _ in range(repeats):
        for c in candidates:
            times[c].append(time_call(calls[c]))
    return Choice(name, {c: statistics.median(t) for c, t in times.items()})


def _qkv(length: int, heads: int, grad: bool = False) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, heads, length, 64, generator=gen).requires_grad_(grad)
            for _ in range(3)]


def _measure_band_block(config: TuneConfig) -> Choice:
    q, k, v = _qkv(config.length, config.heads)
    windows = [masks.sliding_window(64), masks.sliding_window(256)]

    def run(block: int) -> Callable[[], Any]:
        def call() -> None:
            with tuning.override(band_block=block), torch.no_grad():
                for window in windows:
                    attention(q, k, v, mask=window, backend="blocked")
        return call

    return _side_by_side("band_block", config.band_blocks, config.repeats, run)


def _measure_band_block_backward(config: TuneConfig) -> Choice:
    q, k, v = _qkv(config.length, config.heads, grad=True)
    window = masks.sliding_window(512)
    out = attention(q, k, v, mask=window, backend="blocked")
    grad = torch.ones_like(out)

    def run(block: int) -> Callable[[], Any]:
        def call() -> None:
            with tuning.override(band_block_backward=block):
                result = attention(q, k, v, mask=window, backend="blocked")
                torch.autograd.grad(result, (q, k, v), grad)
        return call

    return _side_by_side("band_block_backward", config.band_blocks_backward, config.repeats,
                         run)


def _measure_fused_tiles(config: TuneConfig) -> Choice:
    q, k, v = _qkv(config.length, config.heads)
    mask = masks.causal() & masks.padding([config.length - config.length // 8])

    def run(tile: int) -> Callable[[], Any]:
        def call() -> None:
            with tuning.override(fused_block_q=tile, fused_block_k=tile), torch.no_grad():
                attention(q, k, v, mask=mask, backend="blocked")
        return call

    return _side_by_side("fused_block", config.fused_tiles, config.repeats, run)


def _measure_noncausal_chunk(config: TuneConfig) -> Choice:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, config.length, 64 * config.heads, generator=gen)

    def run(chunk: int) -> Callable[[], Any]:
        layer = build_attention("performer", dim=64 * config.heads, num_heads=config.heads,
                                noncausal_chunk=chunk).eval()

        def call() -> None:
            with torch.no_grad():
                layer(x)
        return call

    return _side_by_side("kernel_noncausal_chunk", config.noncausal_chunks, config.repeats, run)


def run_tune(config: TuneConfig | None = None, *, out: Path | None = None,
             write: bool = True) -> tuple[dict[str, int], list[Choice]]:
    """Measure, print a table, and (with ``write``) write the tuning file. Returns the chosen
    values and every measurement."""
    config = config or TuneConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        # Measure against the defaults, whatever an earlier tuning file says.
        with tuning.override(**dataclasses.asdict(tuning.DEFAULTS)):
            choices = [_measure_band_block(config), _measure_band_block_backward(config),
                       _measure_fused_tiles(config), _measure_noncausal_chunk(config)]
    finally:
        torch.set_num_threads(threads)
    values: dict[str, int] = {}
    for choice in choices:
        if choice.name == "fused_block":
            values["fused_block_q"] = values["fused_block_k"] = choice.best
        else:
            values[choice.name] = choice.best
    print(f"L = {config.length}, {config.heads} heads, D = 64, {config.threads} thread(s), "
          f"median of {config.repeats} side-by-side rounds")
    for choice in choices:
        cells = ", ".join(f"{c}: {s * 1e3:.1f} ms{' *' if c == choice.best else ''}"
                          for c, s in choice.seconds.items())
        print(f"  {choice.name:<24} {cells}")
    if write:
        path = tuning.write(values, out or tuning.default_path(), measured={
            "command": "attnkit bench tune", "length": config.length, "heads": config.heads,
            "threads": config.threads, "repeats": config.repeats,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": " ".join(filter(None, (platform.machine(), platform.processor(),
                                              f"{os.cpu_count()} cpus"))),
            "torch": torch.__version__,
            "seconds": {c.name: {str(k): round(s, 5) for k, s in c.seconds.items()}
                        for c in choices}})
        tuning.reset()
        print(f"wrote {path} (the engine reads it at first use; delete it for the defaults)")
    return values, choices


def _cmd_tune(args: argparse.Namespace) -> int:
    config = TuneConfig(length=16384, repeats=5) if args.full else TuneConfig()
    if args.length:
        config = TuneConfig(length=args.length, repeats=config.repeats)
    run_tune(config, out=Path(args.out) if args.out else None, write=not args.dry_run)
    return 0


def register(bench_subparsers: Any) -> None:
    """Add ``attnkit bench tune``."""
    p = bench_subparsers.add_parser(
        "tune", help="re-measure the kernels' tuning constants on this machine",
        description="Time the important tuning constants (band blocks, fused tiles, the "
                    "kernel-feature chunk) at a few values side by side and write the best to "
                    f"the tuning file (${tuning.ENV_VAR} or the user config directory), which "
                    "the engine reads at first use. Quick by default (L = 4096, about a "
                    "minute or two on one thread).")
    p.add_argument("--full", action="store_true", help="L = 16384 and 5 rounds (minutes)")
    p.add_argument("--length", type=int, help="sequence length of the measurements")
    p.add_argument("--out", help=f"write here instead (default: ${tuning.ENV_VAR} or "
                                 f"{tuning.default_path()})")
    p.add_argument("--dry-run", action="store_true", dest="dry_run",
                   help="measure and print, write nothing")
    p.set_defaults(handler=_cmd_tune)
