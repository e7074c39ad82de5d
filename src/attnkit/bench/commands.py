"""``attnkit bench ...``: each suite adds its own subcommand to the ``bench`` group.

A suite module (``attnkit.bench.attention``'s CLI lives here; ``attnkit.bench.kinds`` and others
bring their own) exposes ``register(bench_subparsers)``; :data:`SUITE_MODULES` lists them.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

# suites outside this file, each with register()
SUITE_MODULES = ("attnkit.bench.kinds", "attnkit.bench.lm_throughput", "attnkit.bench.task_kinds",
                 "attnkit.bench.decode", "attnkit.bench.tune", "attnkit.bench.hf_capture",
                 "attnkit.bench.compile_speed", "attnkit.bench.lra")


def register(subparsers: Any) -> None:
    """Add ``attnkit bench`` and its suites to the top-level parser's subparsers."""
    bench = subparsers.add_parser("bench", help="speed, memory and accuracy benchmarks",
                                  description="Benchmarks; results are printed and written as "
                                              "CSV.")
    suites = bench.add_subparsers(dest="suite", metavar="SUITE", required=True)
    _register_attention(suites)
    _register_tiles(suites)
    for name in SUITE_MODULES:
        importlib.import_module(name).register(suites)


def _register_attention(suites: Any) -> None:
    from attnkit.bench.attention import PATTERNS

    p = suites.add_parser(
        "attention", help="attnkit backends vs torch SDPA, plain math and FlexAttention",
        description="Forward and forward+backward time, peak memory and useful-work rate of "
                    "full, causal, sliding-window and packed-document attention.")
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="sequence lengths (default 1024 4096 16384; --small: 256 1024)")
    p.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per case, median reported (default 3; --small: 1)")
    p.add_argument("--window", type=int, default=512, help="sliding window size")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("bench_results"),
                   help="folder for attention.csv")
    p.add_argument("--memory-budget-gib", type=float, default=6.0,
                   help="skip paths whose estimated peak memory exceeds this")
    p.add_argument("--max-call-s", type=float, default=60.0,
                   help="skip paths whose estimated single call exceeds this many seconds")
    p.add_argument("--paths", nargs="+", default=None,
                   help="only paths whose name contains one of these words, e.g. auto 'torch "
                        "sdpa (flags)'")
    p.add_argument("--modes", nargs="+", choices=["fwd", "fwd+bwd"], default=["fwd", "fwd+bwd"])
    p.add_argument("--long-call-s", type=float, default=5.0,
                   help="a path whose warm-up took longer gets a single timed call")
    p.add_argument("--no-flex", action="store_true",
                   help="leave out FlexAttention (its compilation takes a while)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice); on a shared, "
                        "overloaded machine 1 thread gives steadier numbers")
    p.add_argument("--small", action="store_true",
                   help="a quick run: L=256 1024, one repeat (make demo, tests)")
    p.set_defaults(handler=_run_attention)


def _run_attention(args: argparse.Namespace) -> int:
    from attnkit.bench.attention import AttentionBenchConfig, run_attention_bench

    lengths = args.lengths or ([256, 1024] if args.small else [1024, 4096, 16384])
    repeats = args.repeats if args.repeats is not None else (1 if args.small else 3)
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    if min(lengths) < 1:
        raise ValueError(f"--lengths must be >= 1, got {lengths}")
    cfg = AttentionBenchConfig(
        lengths=tuple(lengths), patterns=tuple(args.patterns), heads=args.heads,
        head_dim=args.head_dim, window=args.window, repeats=repeats, out_dir=args.out,
        memory_budget_gib=args.memory_budget_gib, max_call_s=args.max_call_s,
        flex=not args.no_flex, matmul_size=1024 if args.small else 2048,
        threads=args.threads, paths=args.paths, long_call_s=args.long_call_s,
        modes=tuple(args.modes))
    run_attention_bench(cfg)
    return 0


def _register_tiles(suites: Any) -> None:
    p = suites.add_parser("tiles", help="time of 'blocked' per tile size",
                          description="How the tile size of the blocked backend's fused CPU "
                                      "path changes its forward (or forward+backward) time and "
                                      "useful-work rate (square tiles).")
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--mode", choices=("fwd", "fwd+bwd"), default="fwd")
    p.add_argument("--patterns", nargs="+", choices=("causal", "sliding_window", "document"),
                   default=["causal", "sliding_window", "document"])
    p.add_argument("--out", type=Path, default=Path("bench_results"),
                   help="folder for tiles.csv, tiles.md and tiles.png (like 'bench attention')")
    p.set_defaults(handler=_run_tiles)


def _run_tiles(args: argparse.Namespace) -> int:
    from attnkit.bench.attention import AttentionBenchConfig, tile_sweep

    if args.length < 1 or min(args.sizes) < 1 or args.repeats < 1:
        raise ValueError(f"--length, --sizes and --repeats must be >= 1, got {args.length}, "
                         f"{args.sizes}, {args.repeats}")
    cfg = AttentionBenchConfig(lengths=(args.length,), out_dir=None, threads=args.threads)
    rows = tile_sweep(args.length, args.sizes, patterns=args.patterns, repeats=args.repeats,
                      mode=args.mode, cfg=cfg)
    from attnkit.bench.attention import plot_tiles
    from attnkit.bench.harness import write_outputs

    written = write_outputs(args.out, "tiles", rows, list(rows[0]),
                            plot=lambda path: plot_tiles(rows, path))
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
