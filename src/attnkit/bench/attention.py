"""The attention benchmark: attnkit's backends beside torch SDPA, plain math and FlexAttention.

For each mask pattern (full, causal, sliding window, packed documents) and length, every path is
timed forward and forward+backward, with its peak memory and its *useful-work rate*: the FLOPs of
the allowed (query, key) pairs only (``4 * D * pairs`` per head forward, ``12 * D * pairs`` for
forward+backward: the two forward matmuls and the four backward ones, recomputation not counted)
divided by the time. This machine's float32 matmul rate is measured in the same rounds as the
paths (one n x n x n product per round, median), so each rate can be read as a fraction of what
the hardware did on a plain matmul under the same load.

All paths of one (pattern, length, mode) are timed in rounds, one call of each path per round,
and each reports its median: on a shared machine a burst of load then hits every path alike, so
the ratios between rows of one case are steadier than the absolute times.

Shape legend: B batch (1), H heads, L length (queries = keys), D head dim.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkit import masks
from attnkit.bench.harness import (
    PeakMemory,
    distinct_colours,
    format_table,
    matmul_gflops,
    measure,
    write_outputs,
)
from attnkit.engine import attention
from attnkit.functional.masks import Mask

__all__ = ["PATTERNS", "AttentionBenchConfig", "run_attention_bench"]

PATTERNS = ("full", "causal", "sliding_window", "document")
#: The length issue 2 states the sliding-window, FlexAttention and memory targets at.
TARGET_LENGTH = 16384


@dataclass(frozen=True, kw_only=True)
class AttentionBenchConfig:
    """What the attention benchmark measures."""

    lengths: Sequence[int] = (1024, 4096, 16384)  # sequence lengths L (queries = keys)
    patterns: Sequence[str] = PATTERNS  # mask patterns, from PATTERNS
    heads: int = 8  # H
    head_dim: int = 64  # D
    batch: int = 1  # B
    window: int = 512  # sliding_window(window): each query sees itself and `window` before it
    repeats: int = 3  # timed rounds (all paths of a case in turn; median per path)
    long_call_s: float = 5.0  # a path whose warm-up took longer gets a single timed call
    memory_budget_gib: float = 6.0  # skip a path whose estimated peak exceeds this
    max_call_s: float = 60.0  # skip a path whose estimated single call exceeds this
    duplicate_max_length: int = 4096  # attnkit reference / sdpa_dense (same kernels as the
    # plain-math and dense-SDPA rows) only up to this length
    out_dir: Path | None = Path("bench_results")  # CSV written here (None: no file)
    seed: int = 0  # input and document-length seed
    flex: bool = True  # include compiled FlexAttention (compiles per shape: slow first call)
    matmul_size: int = 2048  # n of the n x n x n float32 matmul that sets the reference rate
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    paths: Sequence[str] | None = None  # only paths whose name contains one of these
    modes: Sequence[str] = ("fwd", "fwd+bwd")  # forward only, and/or forward+backward


@dataclass
class _Case:
    """One pattern at one length: inputs, the attnkit mask and its dense form (lazily)."""

    pattern: str
    length: int
    cfg: AttentionBenchConfig
    mask: Mask | None
    allowed_pairs: int  # allowed (query, key) pairs per head
    doc_ids: Tensor | None = None
    _dense: Tensor | None = field(default=None, repr=False)

    def dense_bool(self) -> Tensor:
        if self._dense is None:
            assert self.mask is not None
            self._dense = self.mask.dense(self.length, self.length)
        return self._dense


def _document_ids(length: int, seed: int) -> Tensor:
    """(1, L) ids of packed documents with lengths drawn between L/16 and L/4."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = max(1, length // 16), max(2, length // 4)
    sizes: list[int] = []
    while sum(sizes) < length:
        sizes.append(int(torch.randint(lo, hi + 1, (1,), generator=gen)))
    sizes[-1] -= sum(sizes) - length
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))[None]


def _count_allowed(mask: Mask | None, length: int) -> int:
    if mask is None:
        return length * length
    total, chunk = 0, max(1, (1 << 24) // length)
    k = torch.arange(length).view(1, 1, 1, -1)
    zero = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    for q0 in range(0, length, chunk):
        q = torch.arange(q0, min(q0 + chunk, length)).view(1, 1, -1, 1)
        total += int(mask.allowed(zero, zero, q, k, length, length).sum())
    return total


def _make_case(pattern: str, length: int, cfg: AttentionBenchConfig) -> _Case:
    doc_ids = None
    mask: Mask | None
    if pattern == "full":
        mask = None
    elif pattern == "causal":
        mask = masks.causal()
    elif pattern == "sliding_window":
        mask = masks.sliding_window(cfg.window)
    elif pattern == "document":
        doc_ids = _document_ids(length, cfg.seed)
        mask = masks.document(doc_ids) & masks.causal()
    else:
        raise ValueError(f"unknown pattern {pattern!r}; choose from {list(PATTERNS)}")
    return _Case(pattern, length, cfg, mask, _count_allowed(mask, length), doc_ids)


# -- the paths ----------------------------------------------------------------------------------
Runner = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class _Path:
    """One way of computing the attention of a case."""

    name: str
    build: Callable[[_Case], Runner]  # returns q, k, v -> out (set-up excluded from timing)
    why_not: Callable[[_Case, bool], str | None]  # reason to skip (case, with backward) or None
    peak_bytes: Callable[[_Case, bool], float]  # rough peak estimate for the memory budget
    dense_flops: bool = False  # computes every (query, key) pair, masked or not


def _scores_bytes(case: _Case) -> float:
    cfg = case.cfg
    return 4.0 * cfg.batch * cfg.heads * case.length**2


def _linear_bytes(case: _Case) -> float:
    cfg = case.cfg
    return 4.0 * 12 * cfg.batch * cfg.heads * case.length * cfg.head_dim


def _attnkit(backend: str) -> Callable[[_Case], Runner]:
    def build(case: _Case) -> Runner:
        return lambda q, k, v: attention(q, k, v, mask=case.mask, backend=backend)
    return build


def _attnkit_reason(backend: str) -> Callable[[_Case, bool], str | None]:
    def why(case: _Case, train: bool) -> str | None:
        from attnkit.backends.dispatch import report
        from attnkit.functional.math import validate

        cfg = case.cfg
        q = torch.empty(cfg.batch, cfg.heads, case.length, cfg.head_dim,
                        requires_grad=train)
        spec = validate(q, q, q, mask=case.mask, bias=None, scale=None, softcap=None,
                        dropout_p=0.0)
        with torch.set_grad_enabled(train):
            rep = report(spec, backend)
        if rep.chosen is None:
            return "; ".join(rep.reasons.get(backend, ["unsupported"]))
        if backend in ("reference", "sdpa_dense") and case.length > cfg.duplicate_max_length:
            twin = "plain math" if backend == "reference" else "torch SDPA dense-mask"
            return (f"same kernels as the {twin} row; run only up to "
                    f"L={cfg.duplicate_max_length}")
        return None
    return why


def _torch_sdpa_native(case: _Case) -> Runner:
    causal = case.pattern == "causal"
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _native_reason(case: _Case, train: bool) -> str | None:
    if case.pattern not in ("full", "causal"):
        return f"SDPA has no flag for the {case.pattern} pattern"
    return None


def _torch_sdpa_dense(case: _Case) -> Runner:
    allowed = case.dense_bool()  # built once, outside the timed calls
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def _dense_reason(case: _Case, train: bool) -> str | None:
    if case.mask is None:
        return "no mask to densify (full attention)"
    return None


def _plain_math(case: _Case) -> Runner:
    allowed = None if case.mask is None else case.dense_bool()
    scale = 1.0 / math.sqrt(case.cfg.head_dim)

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        scores = (q @ k.transpose(-1, -2)) * scale
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v
    return run


def _flex_compiled(case: _Case) -> Runner:
    from torch.nn.attention.flex_attention import create_block_mask

    from attnkit.backends.flex import compiled_flex

    block_mask = None
    if case.mask is not None:
        block_mask = create_block_mask(case.mask.mask_mod(case.length, case.length), B=None,
                                       H=None, Q_LEN=case.length, KV_LEN=case.length,
                                       device="cpu")
    flex = compiled_flex()
    return lambda q, k, v: flex(q, k, v, block_mask=block_mask)


def _flex_reason(case: _Case, train: bool) -> str | None:
    from attnkit.backends.flex import flex_available

    if not case.cfg.flex:
        return "FlexAttention not requested (--no-flex)"
    if not flex_available():
        return f"torch {torch.__version__} has no FlexAttention"
    if train:
        return f"FlexAttention has no backward on CPU (torch {torch.__version__})"
    return None


def _attnkit_flex_reason(case: _Case, train: bool) -> str | None:
    return _flex_reason(case, train) or _attnkit_reason("flex")(case, train)


def _attnkit_flex(case: _Case) -> Runner:
    from attnkit.backends import flex

    flex.allow_in_auto(False)
    return _attnkit("flex")(case)


def _dense_peak(case: _Case, train: bool) -> float:
    return _scores_bytes(case) * (4 if train else 2) + _linear_bytes(case)


def _mask_peak(case: _Case, train: bool) -> float:
    # bool mask + the float copy the kernel makes, per (query, key) pair, shared by heads
    return 5.0 * case.length**2 * (2 if train else 1) + _linear_bytes(case)


def _linear_peak(case: _Case, train: bool) -> float:
    return _linear_bytes(case) * (2 if train else 1)


def _paths() -> list[_Path]:
    return [
        _Path("attnkit auto", _attnkit("auto"), _attnkit_reason("auto"), _linear_peak),
        _Path("attnkit blocked", _attnkit("blocked"), _attnkit_reason("blocked"),
              _linear_peak),
        _Path("attnkit sdpa", _attnkit("sdpa"), _attnkit_reason("sdpa"), _linear_peak),
        _Path("attnkit sdpa_dense", _attnkit("sdpa_dense"), _attnkit_reason("sdpa_dense"),
              _mask_peak, dense_flops=True),
        _Path("attnkit reference", _attnkit("reference"), _attnkit_reason("reference"),
              _dense_peak, dense_flops=True),
        _Path("attnkit flex", _attnkit_flex, _attnkit_flex_reason, _linear_peak),
        _Path("torch sdpa (flags)", _torch_sdpa_native, _native_reason, _linear_peak),
        _Path("torch sdpa (dense mask)", _torch_sdpa_dense, _dense_reason, _mask_peak,
              dense_flops=True),
        _Path("plain math", _plain_math, lambda c, t: None, _dense_peak, dense_flops=True),
        _Path("torch flex (compiled)", _flex_compiled, _flex_reason, _linear_peak),
    ]


# -- running ------------------------------------------------------------------------------------
def _estimated_seconds(path: _Path, case: _Case, train: bool, matmul: float) -> float:
    cfg = case.cfg
    pairs = case.length**2 if path.dense_flops else case.allowed_pairs
    flops = (12 if train else 4) * cfg.head_dim * cfg.heads * cfg.batch * pairs
    return flops / (0.5 * matmul * 1e9)  # fused kernels reach ~0.5-0.8 of the matmul rate


def _skip_reason(path: _Path, case: _Case, train: bool, matmul: float) -> str | None:
    cfg = case.cfg
    reason = path.why_not(case, train)
    if reason is None and path.peak_bytes(case, train) > cfg.memory_budget_gib * 2**30:
        reason = (f"needs ~{path.peak_bytes(case, train) / 2**30:.1f} GiB > budget "
                  f"{cfg.memory_budget_gib} GiB")
    if reason is None and _estimated_seconds(path, case, train, matmul) > cfg.max_call_s:
        reason = (f"one call estimated ~{_estimated_seconds(path, case, train, matmul):.0f} s > "
                  f"{cfg.max_call_s} s")
    return reason


def _run_modes(paths: Sequence[_Path], case: _Case, train: bool, matmul: float,
               log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every path of one case and mode, timed round-robin so that load changes hit all alike."""
    cfg = case.cfg
    mode = "fwd+bwd" if train else "fwd"
    rows: dict[str, dict[str, Any]] = {}
    calls: dict[str, Callable[[], None]] = {}
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.batch, cfg.heads, case.length, cfg.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).requires_grad_(train) for _ in range(3))
    grad = torch.randn(shape, generator=gen)
    for path in paths:
        rows[path.name] = {"pattern": case.pattern, "L": case.length, "path": path.name,
                           "mode": mode, "ms": math.nan, "peak_MiB": math.nan,
                           "useful_GFLOPs": math.nan, "pct_matmul": math.nan,
                           "matmul_GFLOPs": math.nan, "repeats": 0, "note": ""}
        reason = _skip_reason(path, case, train, matmul)
        if reason is None:
            try:
                calls[path.name] = _make_call(path, case, train, q, k, v, grad)
            except (RuntimeError, NotImplementedError, ValueError) as err:
                reason = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
        if reason is not None:
            rows[path.name]["note"] = reason if reason.startswith("failed") else (
                "skipped: " + reason)
            log(f"  skip {path.name:<24} {mode:<8} {reason}")
    # Warm-up (compilation, first-touch page faults), then the timed rounds.
    first: dict[str, float] = {}
    for name, call in list(calls.items()):
        try:
            start = time.perf_counter()
            call()
            first[name] = time.perf_counter() - start
        except (RuntimeError, NotImplementedError, ValueError) as err:
            rows[name]["note"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
            log(f"  FAIL {name:<24} {mode:<8} {rows[name]['note']}")
            del calls[name]
    samples: dict[str, list[float]] = {name: [] for name in calls}
    peaks: dict[str, list[float]] = {name: [] for name in calls}
    # Peak memory of quick paths from one untimed call each (see harness.measure: the baseline
    # reset's page faults stay out of the timed rounds); slow paths measure their single call.
    for name, call in calls.items():
        if first[name] <= cfg.long_call_s:
            with PeakMemory() as mem:
                call()
            peaks[name].append(mem.mib)
    a = torch.randn(cfg.matmul_size, cfg.matmul_size, generator=gen)
    b = torch.randn(cfg.matmul_size, cfg.matmul_size, generator=gen)
    matmul_samples = []
    for round_index in range(cfg.repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        matmul_samples.append(time.perf_counter() - start)
        for name, call in calls.items():
            if first[name] > cfg.long_call_s:
                if round_index == 0:  # slow paths get a single call, timed and measured
                    m = measure(call, repeats=1, warmup=0)
                    samples[name].append(m.seconds)
                    peaks[name].append(m.peak_mib)
                continue
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    flops = (12 if train else 4) * cfg.head_dim * cfg.heads * cfg.batch * case.allowed_pairs
    if calls:  # the matmul rate under this case's load (its own rounds)
        matmul = 2 * cfg.matmul_size**3 / statistics.median(matmul_samples) / 1e9
        log(f"  {'float32 matmul':<24} {mode:<8} {matmul:.1f} GFLOP/s in the same rounds")
    for name in calls:
        seconds = statistics.median(samples[name])
        peak = max(peaks[name])
        rate = flops / seconds / 1e9
        rows[name].update(ms=seconds * 1e3, peak_MiB=peak, useful_GFLOPs=rate,
                          pct_matmul=100 * rate / matmul, repeats=len(samples[name]),
                          matmul_GFLOPs=matmul)
        log(f"  {name:<24} {mode:<8} {seconds * 1e3:10.1f} ms  {peak:8.1f} MiB  "
            f"{rate:6.1f} GFLOP/s useful")
    return list(rows.values())


def _make_call(path: _Path, case: _Case, train: bool, q: Tensor, k: Tensor, v: Tensor,
               grad: Tensor) -> Callable[[], None]:
    runner = path.build(case)
    if train:
        def call() -> None:
            for t in (q, k, v):
                t.grad = None
            runner(q, k, v).backward(grad)
    else:
        def call() -> None:
            with torch.no_grad():
                runner(q, k, v)
    return call


COLUMNS = ("pattern", "L", "path", "mode", "ms", "peak_MiB", "useful_GFLOPs", "pct_matmul",
           "matmul_GFLOPs", "repeats", "note")


def run_attention_bench(cfg: AttentionBenchConfig,
                        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every (pattern, length, path, mode); print progress, a table and target checks."""
    for p in cfg.patterns:
        if p not in PATTERNS:
            raise ValueError(f"unknown pattern {p!r}; choose from {list(PATTERNS)}")
    if any(n < 1 for n in cfg.lengths):
        raise ValueError(f"lengths must be >= 1, got {list(cfg.lengths)}")
    if cfg.threads is not None:
        if cfg.threads < 1:
            raise ValueError(f"threads must be >= 1, got {cfg.threads}")
        torch.set_num_threads(cfg.threads)
    started = time.time()
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32, B={cfg.batch}, "
        f"H={cfg.heads}, D={cfg.head_dim}; memory: "
        f"{'peak RSS growth (VmHWM)' if PeakMemory.cpu_supported() else 'not measurable here'}")
    matmul_start = matmul_gflops(cfg.matmul_size)
    log(f"float32 matmul ({cfg.matmul_size}^3): {matmul_start:.1f} GFLOP/s")
    rows: list[dict[str, Any]] = []
    paths = [p for p in _paths()
             if cfg.paths is None or any(word in p.name for word in cfg.paths)]
    if not paths:
        raise ValueError(f"no path matches {list(cfg.paths or [])}; paths are "
                         f"{[p.name for p in _paths()]}")
    for length in cfg.lengths:
        for pattern in cfg.patterns:
            case = _make_case(pattern, length, cfg)
            log(f"{pattern} L={length}: {case.allowed_pairs / length**2:.1%} of pairs allowed")
            for train in (False, True):
                if ("fwd+bwd" if train else "fwd") in cfg.modes:
                    rows.extend(_run_modes(paths, case, train, matmul_start, log))
    log(f"float32 matmul at the end: {matmul_gflops(cfg.matmul_size):.1f} GFLOP/s "
        f"(pct_matmul uses the rate measured in each case's own rounds)")
    log("")
    log(format_table(rows, COLUMNS))
    log("")
    for line in target_report(rows, cfg):
        log(line)
    log(f"total {time.time() - started:.0f} s")
    if cfg.out_dir is not None:
        written = write_outputs(Path(cfg.out_dir), "attention", rows, COLUMNS,
                                plot=lambda path: plot_attention(rows, path))
        log(f"wrote {', '.join(str(p) for p in written)}")
    return rows


def plot_attention(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Time against L, one panel per pattern: a colour per path, solid forward, dashed fwd+bwd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    patterns = list(dict.fromkeys(r["pattern"] for r in rows))
    names = list(dict.fromkeys(r["path"] for r in rows))
    colours = dict(zip(names, distinct_colours(len(names)), strict=True))
    fig, axes = plt.subplots(1, max(1, len(patterns)), figsize=(5 * max(1, len(patterns)), 4.5),
                             squeeze=False)
    for ax, pattern in zip(axes[0], patterns, strict=False):
        for name in names:
            for mode, style in (("fwd", "-"), ("fwd+bwd", "--")):
                points = sorted((r["L"], r["ms"]) for r in rows if r["pattern"] == pattern
                                and r["path"] == name and r["mode"] == mode
                                and math.isfinite(r["ms"]))
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o",
                            ms=3, color=colours[name])
        ax.set_title(pattern)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("time per call (ms)")
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=colours[n], marker="o", ms=3, label=n) for n in names]
    handles += [Line2D([], [], color="black", linestyle="-", label="solid: forward"),
                Line2D([], [], color="black", linestyle="--", label="dashed: forward+backward")]
    axes[0][0].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tiles(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Milliseconds per tile size (x) for each pattern (a colour each) of a tile sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [key[:-3] for key in rows[0] if key.endswith(" ms")] if rows else []
    colours = distinct_colours(len(rows))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for colour, row in zip(colours, rows, strict=True):
        ax.plot(variants, [row[f"{v} ms"] for v in variants], "-", marker="o", color=colour,
                label=f"{row['pattern']} L={row['L']} {row['mode']}")
    ax.set_xlabel("tile size (default: planned by mask structure)")
    ax.set_ylabel("time per call (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _find(rows: Sequence[dict[str, Any]], pattern: str, length: int, path: str,
          mode: str) -> dict[str, Any] | None:
    for r in rows:
        if (r["pattern"], r["L"], r["path"], r["mode"]) == (pattern, length, path, mode):
            return r
    return None


def _ms(row: dict[str, Any] | None) -> float:
    return math.nan if row is None else float(row["ms"])


def target_report(rows: Sequence[dict[str, Any]], cfg: AttentionBenchConfig) -> list[str]:
    """The issue's targets, checked on these rows (ratios of one run)."""
    out = ["targets (ratios from this run):"]
    long = max(cfg.lengths)

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("MET" if ok else "NOT MET")

    def at_target_size(ok: bool) -> str:
        """Targets stated at L = TARGET_LENGTH are not judged on smaller runs (--small)."""
        if long != TARGET_LENGTH:
            return f"n/a at this size (target at L={TARGET_LENGTH})"
        return verdict(ok)

    for pattern in ("full", "causal"):
        for length in cfg.lengths:
            for mode in ("fwd", "fwd+bwd"):
                auto = _ms(_find(rows, pattern, length, "attnkit auto", mode))
                ref = _ms(_find(rows, pattern, length, "torch sdpa (flags)", mode))
                if math.isnan(auto) or math.isnan(ref):
                    continue
                ratio = ref / auto
                out.append(f"  {pattern} L={length} {mode}: auto speed = {ratio:.2f}x torch "
                           f"SDPA (target >= 0.95): {verdict(ratio >= 0.95)}")
    blocked = _ms(_find(rows, "sliding_window", long, "attnkit blocked", "fwd"))
    dense = _ms(_find(rows, "sliding_window", long, "torch sdpa (dense mask)", "fwd"))
    flex = _ms(_find(rows, "sliding_window", long, "torch flex (compiled)", "fwd"))
    train = _find(rows, "sliding_window", long, "attnkit blocked", "fwd+bwd")
    if not math.isnan(blocked):
        if not math.isnan(dense):
            out.append(f"  sliding_window L={long} fwd: blocked {dense / blocked:.1f}x faster "
                       f"than SDPA + dense mask (target >= 8): "
                       f"{at_target_size(dense / blocked >= 8)}")
        if not math.isnan(flex):
            out.append(f"  sliding_window L={long} fwd: blocked {flex / blocked:.2f}x the speed "
                       f"of compiled FlexAttention (target >= 1): "
                       f"{at_target_size(flex / blocked >= 1)}")
        works = train is not None and not math.isnan(train["ms"])
        out.append(f"  sliding_window L={long} fwd+bwd with blocked works: {verdict(works)}")
    for pattern in cfg.patterns:
        mem_b = _find(rows, pattern, long, "attnkit blocked", "fwd+bwd")
        mem_p = _find(rows, pattern, long, "plain math", "fwd+bwd")
        if mem_b is None or math.isnan(mem_b["peak_MiB"]):
            continue
        plain, how = (math.nan, "")
        if mem_p is not None and not math.isnan(mem_p["peak_MiB"]):
            plain, how = mem_p["peak_MiB"], "measured"
        else:  # quadratic terms dominate: scale the largest measured length
            measured = [r for r in rows if r["pattern"] == pattern and r["path"] == "plain math"
                        and r["mode"] == "fwd+bwd" and not math.isnan(r["peak_MiB"])]
            if measured:
                r = max(measured, key=lambda r: r["L"])
                plain = r["peak_MiB"] * (long / r["L"]) ** 2
                how = f"estimated: L={r['L']} measured x {(long / r['L']) ** 2:.0f}"
        if not math.isnan(plain):
            frac = mem_b["peak_MiB"] / plain
            out.append(f"  {pattern} L={long} fwd+bwd memory: blocked {mem_b['peak_MiB']:.0f} MiB "
                       f"vs plain math {plain:.0f} MiB ({how}) = 1/{1 / frac:.0f} "
                       f"(target <= 1/10): {at_target_size(frac <= 0.1)}")
    for r in rows:
        if (r["path"] == "attnkit blocked" and r["L"] >= 4096
                and not math.isnan(r["pct_matmul"])):
            out.append(f"  blocked {r['pattern']} L={r['L']} {r['mode']}: useful work "
                       f"{r['pct_matmul']:.0f}% of matmul (target >= 60): "
                       f"{verdict(r['pct_matmul'] >= 60)}")
    return out


def tile_sweep(length: int, sizes: Sequence[int], *, patterns: Sequence[str] = (
        "causal", "sliding_window", "document"), repeats: int = 3, mode: str = "fwd",
        cfg: AttentionBenchConfig | None = None,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time of ``blocked`` per square tile size and of the default plan (no size given: causal
    masks and documents planned by structure), forward or forward+backward, round-robin with a
    float32 matmul in every round (medians). The ``%`` columns are useful work as a share of
    that matmul rate, counted as in the attention benchmark."""
    from attnkit.backends.blocked import TileSizes, blocked_attention
    from attnkit.functional.math import AttentionSpec, validate

    if mode not in ("fwd", "fwd+bwd"):
        raise ValueError(f"mode must be 'fwd' or 'fwd+bwd', got {mode!r}")
    cfg = cfg or AttentionBenchConfig(lengths=(length,), out_dir=None)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    train = mode == "fwd+bwd"
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.batch, cfg.heads, length, cfg.head_dim)
    q, k, v, grad = (torch.randn(shape, generator=gen) for _ in range(4))
    q, k, v = (t.requires_grad_(train) for t in (q, k, v))
    square = torch.randn(cfg.matmul_size, cfg.matmul_size, generator=gen)
    rows = []
    for pattern in patterns:
        case = _make_case(pattern, length, cfg)
        spec = validate(q, k, v, mask=case.mask, bias=None, scale=None, softcap=None,
                        dropout_p=0.0)
        variants = {f"b={b}": TileSizes(b, b) for b in sizes}
        variants["default"] = TileSizes()

        def call(tiles: TileSizes, spec: AttentionSpec = spec) -> None:
            out = blocked_attention(spec, tiles)
            if train:
                torch.autograd.grad(out, (q, k, v), grad)

        samples: dict[str, list[float]] = {name: [] for name in [*variants, "matmul"]}
        with torch.set_grad_enabled(train):
            for tiles in variants.values():  # warm-up
                call(tiles)
            for _ in range(repeats):
                for name, tiles in variants.items():
                    start = time.perf_counter()
                    call(tiles)
                    samples[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                square @ square
                samples["matmul"].append(time.perf_counter() - start)
        matmul_rate = 2 * cfg.matmul_size**3 / statistics.median(samples["matmul"])
        useful = (12 if train else 4) * cfg.head_dim * cfg.heads * cfg.batch * case.allowed_pairs
        row: dict[str, Any] = {"pattern": pattern, "L": length, "mode": mode}
        for name in variants:
            seconds = statistics.median(samples[name])
            row[f"{name} ms"] = seconds * 1e3
            row[f"{name} %"] = 100 * useful / seconds / matmul_rate
        rows.append(row)
    log(format_table(rows, list(rows[0])))
    return rows
