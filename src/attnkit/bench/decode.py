"""``attnkit bench decode``: greedy generation with the KV cache, attnkit vs Hugging Face GPT-2.

One GPT-2-small-shaped model (12 layers, 12 heads, 768 wide, vocabulary 50257) is built from a
config with seeded random weights (no download) as Hugging Face's ``GPT2LMHeadModel``, and the
same weights are loaded into attnkit's ``DecoderLM`` with :func:`attnkit.hf.load` and stored
input-major for decoding (:func:`attnkit.models.set_weight_layout`). For every batch size and
prompt length:

1. both generate greedily from the same random prompts and must produce identical tokens
   (checked before any timing; a mismatch stops the run);
2. one untimed call each warms up and measures peak memory;
3. ``repeats`` rounds, alternating which goes first, each timing one call of each that
   generates ``new_tokens``. A forward hook on the output projection (called once per step by
   both) stamps the time of every step inside the call: prefill is the time to the first stamp,
   a decode step the time between two stamps, and a round's step time is the median of its
   ``new_tokens - 1`` steps (robust to the pauses of a shared machine). tokens/s = batch / step
   time; the table gives the median over rounds with the slowest and fastest round.

The weight-streaming bound is timed in the same run: one matrix-vector product over as many
float32 numbers as the model reads per generated token (every parameter except the position
table, of which a step reads one row), in both memory layouts of the matrix (row by row, and
column by column as GPT-2's Conv1D and attnkit's decoder store their weights), keeping the
faster: on an MKL CPU the two kernels read the same bytes at different speeds. A decode step
cannot be faster than reading its weights once, so ``share`` = (tokens/s) / (batch / bound
time) says how close a decoder gets.

    attnkit bench decode                 # full run (about 10-20 min on 2 cores)
    attnkit bench decode --quick         # a tiny model, seconds (CI smoke test)
    attnkit bench decode --profile       # where attnkit's decode step spends its time

Writes ``decode.csv``, ``decode.md`` and ``decode.png`` to ``--out``. Needs the ``hf`` extra
(``pip install 'attnkit[hf]'``).

Shape legend: B batch, L prompt length, N new tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.bench.harness import (
    PeakMemory,
    environment,
    format_table,
    markdown_table,
    write_csv,
)

__all__ = ["BOUND_LAYOUTS", "DecodeBenchConfig", "StepClock", "check_identical",
           "compared_models", "profile_decode", "quick_config", "register", "run_decode_bench",
           "streamed_parameters",
           "weight_streaming_seconds", "weight_streaming_times"]

INSTALL_HINT = "pip install 'attnkit[hf]'  (or: pip install transformers)"

#: the two implementations, in the order of the first round
IMPLEMENTATIONS = ("attnkit", "hf_gpt2")


@dataclass(frozen=True)
class DecodeBenchConfig:
    """Model shape and the grid of cases (defaults: GPT-2 small, the issue's grid)."""

    d_model: int = 768  # width
    num_layers: int = 12  # blocks
    num_heads: int = 12  # attention heads
    vocab_size: int = 50257  # GPT-2's vocabulary
    context: int = 1024  # learned positions (GPT-2's n_positions)
    batches: tuple[int, ...] = (1, 8)  # batch sizes
    prompts: tuple[int, ...] = (32, 512)  # prompt lengths
    new_tokens: int = 32  # tokens generated per timed call (>= 2)
    repeats: int = 3  # alternating rounds per case; medians over them
    threads: int | None = 2  # torch intra-op threads (None: torch's default)
    seed: int = 0  # weights and prompts
    out_dir: Path | None = Path("bench_results/decode")  # None: write nothing
    bound_repeats: int = 7  # timed matrix-vector products for the bound


def quick_config(**changes: Any) -> DecodeBenchConfig:
    """A tiny model and grid that runs in seconds (``--quick``, tests)."""
    tiny = DecodeBenchConfig(d_model=64, num_layers=2, num_heads=2, vocab_size=512, context=64,
                             batches=(1, 2), prompts=(8, 16), new_tokens=6, repeats=1,
                             bound_repeats=3)
    return replace(tiny, **changes)


def compared_models(cfg: DecodeBenchConfig) -> dict[str, nn.Module]:
    """name -> model: HF's GPT2LMHeadModel with seeded random weights, and attnkit's DecoderLM
    holding the same weights, prepared for decoding."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as err:
        raise ImportError(f"the decode benchmark compares with transformers' GPT-2: "
                          f"{INSTALL_HINT}") from err
    from attnkit.hf import load
    from attnkit.models import set_weight_layout

    torch.manual_seed(cfg.seed)
    config = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context, n_embd=cfg.d_model,
                        n_layer=cfg.num_layers, n_head=cfg.num_heads, bos_token_id=None,
                        eos_token_id=None, pad_token_id=None)
    hf = GPT2LMHeadModel(config).eval()
    # prepared for decoding as the generation docs say: weights input-major, the faster
    # layout for a step's matrix-vector products (attnkit.models.weight_layout)
    ours = set_weight_layout(load(hf), "input_major")
    return {"attnkit": ours.eval(), "hf_gpt2": hf}


def _generators(models: dict[str, nn.Module]) -> dict[str, Callable[[Tensor, int], Tensor]]:
    """name -> generate(prompt (B, L), n) -> (B, L + n) greedy ids with the KV cache."""
    ours, hf = models["attnkit"], models["hf_gpt2"]

    def attnkit_generate(prompt: Tensor, n: int) -> Tensor:
        return ours.generate(prompt, max_new_tokens=n)  # type: ignore[operator, no-any-return]

    def hf_generate(prompt: Tensor, n: int) -> Tensor:
        with torch.inference_mode():
            return hf.generate(  # type: ignore[operator, no-any-return]
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                min_new_tokens=n, do_sample=False, pad_token_id=0, use_cache=True)

    return {"attnkit": attnkit_generate, "hf_gpt2": hf_generate}


def streamed_parameters(model: nn.Module) -> int:
    """Numbers a decode step reads: every distinct parameter but the position table (one row
    of it is read); tied weights count once."""
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    positions = getattr(getattr(model, "positions", None), "table", None)
    skipped = positions.numel() if isinstance(positions, Tensor) else 0
    return sum(unique.values()) - skipped


#: the weight layouts the bound is timed in (attnkit.models.weight_layout)
BOUND_LAYOUTS = ("output_major", "input_major")


def weight_streaming_times(numbers: int, *, width: int, repeats: int = 7) -> dict[str, float]:
    """Median time of one float32 matrix-vector product over ``numbers`` weights, per layout.

    ``output_major``: the (rows, width) matrix stored row by row (PyTorch's default for a
    Linear weight); ``input_major``: the same shape stored column by column (GPT-2's Conv1D,
    attnkit's decoder prepared for decoding). The kernels differ: on an MKL CPU the
    input-major product reads the same bytes about a third faster. Rounds alternate the two,
    so load hits both alike."""
    rows = max(1, numbers // width)
    vector = torch.randn(width)
    matrices = {"output_major": torch.randn(rows, width),
                "input_major": torch.randn(width, rows).t()}  # (rows, width), strides (1, rows)
    times: dict[str, list[float]] = {layout: [] for layout in BOUND_LAYOUTS}
    for index in range(repeats + 2):  # two warm-up rounds
        for layout in BOUND_LAYOUTS if index % 2 == 0 else BOUND_LAYOUTS[::-1]:
            start = time.perf_counter()
            torch.mv(matrices[layout], vector)
            if index >= 2:
                times[layout].append(time.perf_counter() - start)
    return {layout: statistics.median(t) for layout, t in times.items()}


def weight_streaming_seconds(numbers: int, *, width: int, repeats: int = 7) -> float:
    """The time to read every weight once, the floor of a memory-bound decode step: the faster
    layout's median from :func:`weight_streaming_times`."""
    return min(weight_streaming_times(numbers, width=width, repeats=repeats).values())


def check_identical(generators: dict[str, Callable[[Tensor, int], Tensor]], prompt: Tensor,
                    n: int) -> None:
    """Refuse to time implementations whose greedy tokens differ (names the first place)."""
    ours, theirs = (generators[name](prompt, n) for name in IMPLEMENTATIONS)
    if not torch.equal(ours, theirs):
        differ = (ours != theirs).nonzero()
        row, column = (int(i) for i in differ[0])
        raise RuntimeError(f"attnkit and HF GPT-2 generated different greedy tokens for "
                           f"batch {prompt.shape[0]}, prompt {prompt.shape[1]}: first at row "
                           f"{row}, position {column} ({int(ours[row, column])} vs "
                           f"{int(theirs[row, column])}); timings would not compare the same "
                           f"work")


class StepClock:
    """Times the steps of one generate call through a forward hook on the output projection.

    ``with StepClock(head) as clock: generate(...)``; then ``clock.prefill_s`` (call start to
    the first projection) and ``clock.steps_s`` (between consecutive projections)."""

    def __init__(self, head: nn.Module) -> None:
        self.head = head
        self.stamps: list[float] = []

    def __enter__(self) -> StepClock:
        self.stamps = [time.perf_counter()]
        self._hook = self.head.register_forward_hook(
            lambda *_: self.stamps.append(time.perf_counter()))
        return self

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()

    @property
    def prefill_s(self) -> float:
        return self.stamps[1] - self.stamps[0]

    @property
    def steps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps[1:], self.stamps[2:])]


def _measure_case(generators: dict[str, Callable[[Tensor, int], Tensor]],
                  heads: dict[str, nn.Module], prompt: Tensor, cfg: DecodeBenchConfig,
                  log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Rows (one per implementation) for one (batch, prompt length)."""
    batch, length = prompt.shape
    n = cfg.new_tokens
    check_identical(generators, prompt, n)
    peak: dict[str, float] = {}
    for name in IMPLEMENTATIONS:  # warm-up call, which also gives the peak memory
        with PeakMemory() as memory:
            generators[name](prompt, n)
        peak[name] = memory.mib
    prefill: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    step: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for index in range(cfg.repeats):
        order = IMPLEMENTATIONS if index % 2 == 0 else IMPLEMENTATIONS[::-1]
        for name in order:  # alternating who goes first: load changes favour neither
            with StepClock(heads[name]) as clock:
                generators[name](prompt, n)
            if len(clock.stamps) != n + 1:
                raise RuntimeError(f"{name}: expected {n} output projections in a call that "
                                   f"generates {n} tokens, saw {len(clock.stamps) - 1}")
            prefill[name].append(clock.prefill_s)
            step[name].append(statistics.median(clock.steps_s))
        log(f"  B={batch} L={length} round {index + 1}/{cfg.repeats}: " + ", ".join(
            f"{name} {batch / step[name][-1]:.1f} tok/s" for name in IMPLEMENTATIONS))
    ratios = [b / a for a, b in zip(step["attnkit"], step["hf_gpt2"])]  # per round
    rows = []
    for name in IMPLEMENTATIONS:
        rates = [batch / s for s in step[name]]
        rows.append({
            "implementation": name, "batch": batch, "prompt": length, "new_tokens": n,
            "tokens_per_s": statistics.median(rates), "tokens_per_s_min": min(rates),
            "tokens_per_s_max": max(rates), "step_ms": 1e3 * statistics.median(step[name]),
            "prefill_s": statistics.median(prefill[name]), "peak_mib": peak[name],
            "vs_hf": statistics.median(ratios) if name == "attnkit" else 1.0})
    return rows


def run_decode_bench(cfg: DecodeBenchConfig, *, log: Callable[[str], None] = print
                     ) -> dict[str, Any]:
    """Run the grid; returns the environment, the bound and the rows (also written to files)."""
    if cfg.new_tokens < 2 or cfg.repeats < 1 or min(cfg.batches) < 1 or min(cfg.prompts) < 1:
        raise ValueError(f"need new_tokens >= 2, repeats >= 1 and positive batches / prompts, "
                         f"got new_tokens={cfg.new_tokens}, repeats={cfg.repeats}, batches="
                         f"{cfg.batches}, prompts={cfg.prompts}")
    if max(cfg.prompts) + cfg.new_tokens > cfg.context:
        raise ValueError(f"prompt {max(cfg.prompts)} + {cfg.new_tokens} new tokens exceed the "
                         f"model's {cfg.context} positions; raise --context or shorten")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    models = compared_models(cfg)
    env = environment()
    env["transformers"] = __import__("transformers").__version__
    log("environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    numbers = streamed_parameters(models["attnkit"])
    layouts = weight_streaming_times(numbers, width=cfg.d_model, repeats=cfg.bound_repeats)
    bound_layout = min(layouts, key=layouts.__getitem__)
    bound_s = layouts[bound_layout]
    log(f"weight-streaming bound: {numbers / 1e6:.1f} M float32 weights "
        f"({4 * numbers / 2**20:.0f} MiB) read in {1e3 * bound_s:.1f} ms = "
        f"{1 / bound_s:.1f} steps/s ({bound_layout}, the faster layout; "
        + ", ".join(f"{name} {1e3 * t:.1f} ms" for name, t in layouts.items()) + ")")
    generators = _generators(models)
    heads = {"attnkit": models["attnkit"].get_submodule("head"),
             "hf_gpt2": models["hf_gpt2"].get_submodule("lm_head")}
    g = torch.Generator().manual_seed(cfg.seed)
    rows: list[dict[str, Any]] = []
    report = {"config": {k: str(v) if isinstance(v, Path) else v
                         for k, v in asdict(cfg).items()},
              "environment": env, "streamed_parameters": numbers, "bound_s": bound_s,
              "bound_layout": bound_layout, "bound_s_by_layout": layouts, "rows": rows}
    for length in cfg.prompts:
        for batch in cfg.batches:
            prompt = torch.randint(0, cfg.vocab_size, (batch, length), generator=g)
            for row in _measure_case(generators, heads, prompt, cfg, log):
                row["bound_tokens_per_s"] = batch / bound_s
                row["share_of_bound"] = row["tokens_per_s"] * bound_s / batch
                rows.append(row)
            if cfg.out_dir is not None:  # after every case: an interrupted run keeps the rest
                write_reports(report, cfg.out_dir)
    log(format_table(rows, COLUMNS))
    if cfg.out_dir is not None:
        log(f"wrote {cfg.out_dir}/decode.csv, decode.md, decode.png, decode.json")
    return report


def profile_decode(cfg: DecodeBenchConfig, *, batch: int = 1, prompt_length: int = 32,
                   steps: int = 16, rows: int = 15) -> str:
    """torch.profiler's table (self CPU time) of attnkit's decode steps after the prefill."""
    from torch.profiler import ProfilerActivity, profile

    from attnkit.models.decoder import new_caches

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = compared_models(cfg)["attnkit"]
    prompt = torch.randint(0, cfg.vocab_size, (batch, prompt_length),
                           generator=torch.Generator().manual_seed(cfg.seed))
    with torch.inference_mode():
        caches = new_caches(model.stack, cache="static",  # type: ignore[arg-type]
                            max_length=prompt_length + steps + 3)

        def step(tokens: Tensor) -> Tensor:
            hidden = model.features(tokens, caches=caches)[:, -1]  # type: ignore[operator]
            return model.head(hidden).argmax(-1)[:, None]  # type: ignore[operator]

        token = step(prompt)
        for _ in range(3):  # warm-up steps
            token = step(token)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                token = step(token)
    return str(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


#: printed above a profile taken with more than one thread
PROFILE_THREADS_CAVEAT = (
    "note: with more than one thread torch.profiler slows OpenMP kernels (on the project's CPU "
    "the one-query SDPA call took 5.5 ms under it, 20 us timed directly): for where a step's "
    "time goes, profile with --threads 1")

#: the columns of the printed and Markdown tables
COLUMNS = ("implementation", "batch", "prompt", "tokens_per_s", "tokens_per_s_min",
           "tokens_per_s_max", "vs_hf", "share_of_bound", "step_ms", "prefill_s", "peak_mib")


def write_reports(report: dict[str, Any], out_dir: Path) -> None:
    rows = report["rows"]
    write_csv(out_dir / "decode.csv", rows)
    env = report["environment"]
    header = (f"Greedy decoding with the KV cache, {report['config']['new_tokens']} new tokens "
              f"per call, medians of {report['config']['repeats']} alternating rounds "
              f"(min / max beside them). Environment: "
              + ", ".join(f"{k} {v}" for k, v in env.items())
              + f". Weight-streaming bound: {1e3 * report['bound_s']:.1f} ms per step "
                f"({report['streamed_parameters'] / 1e6:.1f} M weights, one matrix-vector "
                f"product in the faster layout, {report['bound_layout']}; "
              + ", ".join(f"{name} {1e3 * t:.1f} ms"
                          for name, t in report["bound_s_by_layout"].items())
              + ").\n\n")
    (out_dir / "decode.md").write_text(header + markdown_table(rows, COLUMNS))
    (out_dir / "decode.json").write_text(json.dumps(report, indent=2, default=str))
    write_plot(rows, out_dir / "decode.png")


def write_plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Tokens/s per case, both implementations side by side, the bound as a tick per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["batch"], r["prompt"]) for r in rows))
    fig, ax = plt.subplots(figsize=(1.8 * len(cases) + 3, 4.5))
    width = 0.38
    for offset, name in zip((-width / 2, width / 2), IMPLEMENTATIONS):
        values = [next(r for r in rows if r["implementation"] == name
                       and (r["batch"], r["prompt"]) == case) for case in cases]
        ax.bar([i + offset for i in range(len(cases))], [v["tokens_per_s"] for v in values],
               width, yerr=[[v["tokens_per_s"] - v["tokens_per_s_min"] for v in values],
                            [v["tokens_per_s_max"] - v["tokens_per_s"] for v in values]],
               label=name, capsize=3)
    bounds = [next(r["bound_tokens_per_s"] for r in rows if (r["batch"], r["prompt"]) == case)
              for case in cases]
    ax.scatter(range(len(cases)), bounds, marker="_", s=900, color="black",
               label="weight-streaming bound")
    ax.set_xticks(range(len(cases)), [f"B={b}, L={n}" for b, n in cases])
    ax.set_ylabel("generated tokens / s (decode, greedy)")
    ax.set_yscale("log")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    d = DecodeBenchConfig()
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help=f"batch sizes (default {' '.join(map(str, d.batches))})")
    p.add_argument("--prompts", type=int, nargs="+", default=None,
                   help=f"prompt lengths (default {' '.join(map(str, d.prompts))})")
    p.add_argument("--new-tokens", type=int, default=None,
                   help=f"tokens generated per timed call (default {d.new_tokens})")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"alternating rounds per case (default {d.repeats})")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch intra-op threads (default 2, as the issue's target; 0: torch's "
                        "default)")
    p.add_argument("--out", type=Path, default=d.out_dir, help="folder for the reports")
    p.add_argument("--quick", action="store_true",
                   help="a tiny model and grid that runs in seconds (CI smoke test)")
    p.add_argument("--profile", action="store_true",
                   help="instead of the comparison: torch.profiler's table of 16 attnkit decode "
                        "steps (first --batches and --prompts value; default B=1, prompt 32)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    base = quick_config() if args.quick else DecodeBenchConfig()
    changes = {"batches": tuple(args.batches) if args.batches else None,
               "prompts": tuple(args.prompts) if args.prompts else None,
               "new_tokens": args.new_tokens, "repeats": args.repeats,
               "threads": args.threads or None, "out_dir": args.out}
    cfg = replace(base, **{k: v for k, v in changes.items()
                           if v is not None or k == "threads"})
    if args.profile:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)  # before the environment line that reports it
        print(environment())
        if cfg.threads != 1:
            print(PROFILE_THREADS_CAVEAT)
        print(profile_decode(cfg, batch=args.batches[0] if args.batches else 1,
                             prompt_length=args.prompts[0] if args.prompts else 32))
        return 0
    run_decode_bench(cfg)
    return 0


def register(suites: Any) -> None:
    """``attnkit bench decode``."""
    p = suites.add_parser("decode", help="greedy generation tokens/s with the KV cache: "
                          "attnkit vs Hugging Face GPT-2 (needs the hf extra)",
                          description=__doc__.split("\n\n")[0] if __doc__ else None)
    _add_arguments(p)
