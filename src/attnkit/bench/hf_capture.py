"""Attention weights of a Hugging Face model without its slow path: what capture costs.

``attnkit bench hf-capture`` builds a BERT-base-sized ``BertModel`` (12 layers, width 768,
12 heads; random weights, nothing downloaded) and times its forward at L = 2048 on:

- ``attnkit``: ``attn_implementation="attnkit"``, no capture (the baseline);
- ``attnkit + capture``: the same, inside ``attnkit.explain.capture(model, layers=[i])``, which
  recomputes layer ``i``'s exact weights from its queries and keys while the forward stays on the
  fused backend;
- ``attnkit + output_attentions``: ``output_attentions=True`` on the attnkit model: every
  layer's weights, recomputed after its fused forward;
- ``eager + output_attentions``: transformers' way to get weights, which runs the eager path
  (every layer's ``L x L`` weights materialized and returned);
- ``sdpa``: transformers' fused path, no weights (for reference).

One model switches implementation with ``set_attn_implementation``, so all paths share weights.
Every round times each path once (after one untimed warm-up call per path); the reported time is
the median over rounds, and a ratio is the median of the per-round ratios to ``attnkit`` in the
same round, so a machine whose speed drifts moves both sides. The captured weights are checked
against eager's ``output_attentions`` of the same layer (max abs difference).

Needs the ``hf`` extra: ``pip install 'attnkit[hf]'``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from attnkit.bench.harness import format_table, time_call

__all__ = ["HFCaptureBenchConfig", "compare_capture_overhead", "register"]

PATHS = ("attnkit", "attnkit + capture", "attnkit + output_attentions",
         "eager + output_attentions", "sdpa")


@dataclass(frozen=True)
class HFCaptureBenchConfig:
    length: int = 2048  # tokens per sequence
    batch: int = 1  # sequences per forward
    layers: int = 12  # BERT layers
    hidden: int = 768  # model width
    heads: int = 12  # attention heads
    capture_layer: int = 0  # which layer capture records (all its heads)
    rounds: int = 3  # timed rounds; each times every path once
    threads: int | None = None  # torch CPU threads (None: torch's default)
    paths: tuple[str, ...] = PATHS  # which paths to time (attnkit is always timed)
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.length, self.batch, self.layers, self.hidden, self.heads, self.rounds) < 1:
            raise ValueError(f"length, batch, layers, hidden, heads and rounds must be >= 1, "
                             f"got {asdict(self)}")
        if not 0 <= self.capture_layer < self.layers:
            raise ValueError(f"capture_layer={self.capture_layer} is not a layer of a "
                             f"{self.layers}-layer model (0..{self.layers - 1})")
        unknown = sorted(set(self.paths) - set(PATHS))
        if unknown:
            raise ValueError(f"unknown paths {unknown}; choose from {list(PATHS)}")


def _bert(cfg: HFCaptureBenchConfig) -> Any:  # a transformers BertModel
    from transformers import BertConfig, BertModel

    import attnkit.hf

    attnkit.hf.register()
    torch.manual_seed(cfg.seed)
    config = BertConfig(num_hidden_layers=cfg.layers, hidden_size=cfg.hidden,
                        num_attention_heads=cfg.heads, intermediate_size=4 * cfg.hidden,
                        max_position_embeddings=max(512, cfg.length))
    config._attn_implementation = "attnkit"
    return BertModel(config).eval()


def _path_calls(model: Any, ids: Tensor, layer: int,
                kept: dict[str, Tensor]) -> dict[str, Callable[[], None]]:
    from attnkit.explain import capture

    def run(implementation: str, **kwargs: Any) -> Any:
        if model.config._attn_implementation != implementation:
            model.set_attn_implementation(implementation)
        with torch.no_grad():
            return model(input_ids=ids, **kwargs)

    def plain() -> None:
        run("attnkit")

    def captured() -> None:
        if model.config._attn_implementation != "attnkit":
            model.set_attn_implementation("attnkit")
        with capture(model, layers=[layer]) as cap:
            run("attnkit")
        kept["captured"] = cap.records[0].weights

    def all_weights() -> None:
        run("attnkit", output_attentions=True)

    def eager() -> None:
        kept["eager"] = run("eager", output_attentions=True).attentions[layer]

    def sdpa() -> None:
        run("sdpa")

    return {"attnkit": plain, "attnkit + capture": captured,
            "attnkit + output_attentions": all_weights, "eager + output_attentions": eager,
            "sdpa": sdpa}


def compare_capture_overhead(cfg: HFCaptureBenchConfig | None = None,
                             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time the paths of the module docstring; returns seconds, ratios and the weight check."""
    cfg = cfg or HFCaptureBenchConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = _bert(cfg)
    ids = torch.randint(0, model.config.vocab_size, (cfg.batch, cfg.length),
                        generator=torch.Generator().manual_seed(cfg.seed))
    kept: dict[str, Tensor] = {}
    calls = _path_calls(model, ids, cfg.capture_layer, kept)
    timed = ["attnkit", *(p for p in PATHS if p != "attnkit" and p in cfg.paths)]
    for path in timed:  # warm-up: allocator, thread pools, first-call dispatch
        calls[path]()
    seconds: dict[str, list[float]] = {path: [] for path in timed}
    for round_index in range(cfg.rounds):
        for path in timed:
            seconds[path].append(time_call(calls[path]))
        log(f"round {round_index + 1}/{cfg.rounds}: " + ", ".join(
            f"{path} {seconds[path][-1]:.2f} s" for path in timed))
    rows = []
    for path in timed:
        ratios = [s / base for s, base in zip(seconds[path], seconds["attnkit"])]
        rows.append({"path": path, "median_s": statistics.median(seconds[path]),
                     "ratio_to_attnkit": statistics.median(ratios)})
    check = None
    if "captured" in kept and "eager" in kept:
        check = (kept["captured"].float() - kept["eager"].float()).abs().max().item()
    return {"config": asdict(cfg), "threads": torch.get_num_threads(), "rows": rows,
            "seconds": seconds, "max_abs_weight_diff_vs_eager": check}


def format_report(report: dict[str, Any]) -> str:
    cfg = report["config"]
    head = (f"BERT {cfg['layers']} layers, width {cfg['hidden']}, {cfg['heads']} heads, "
            f"B={cfg['batch']}, L={cfg['length']}, capture of layer {cfg['capture_layer']} "
            f"(all heads), {report['threads']} threads, median of {cfg['rounds']} rounds")
    table = format_table(report["rows"], ["path", "median_s", "ratio_to_attnkit"])
    check = report["max_abs_weight_diff_vs_eager"]
    tail = "" if check is None else f"\ncaptured weights vs eager output_attentions: max abs " \
                                    f"diff {check:.2e}"
    return f"{head}\n{table}{tail}"


def _run(args: argparse.Namespace) -> int:
    cfg = HFCaptureBenchConfig(length=args.length, batch=args.batch, layers=args.layers,
                               hidden=args.hidden, heads=args.heads,
                               capture_layer=args.capture_layer, rounds=args.rounds,
                               threads=args.threads, paths=tuple(args.paths))
    report = compare_capture_overhead(cfg)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def register(suites: Any) -> None:
    """``attnkit bench hf-capture``."""
    d = HFCaptureBenchConfig()
    p = suites.add_parser("hf-capture", help="cost of capturing a Hugging Face model's "
                          "attention weights with attnkit vs output_attentions (needs hf)",
                          description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--length", type=int, default=d.length)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--capture-layer", type=int, default=d.capture_layer)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.set_defaults(handler=_run)
