"""Decoder LM training throughput: attnkit's DecoderLM vs Hugging Face's GPT-2, side by side.

Both models get the same configuration (width, depth, heads, context, vocabulary, exact GELU,
pre-norm LayerNorm, tied embeddings, 4x MLP, biases, same dropout) and the same batches; one
training step is forward + backward + AdamW step. The two are measured in alternating rounds in
one process (alternating who goes first) so machine load hits both alike; the median round is
reported.

    attnkit bench lm-throughput                  # or: python -m attnkit.bench.lm_throughput

Needs the ``hf`` extra: ``pip install 'attnkit[hf]'`` (transformers), imported lazily.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LMBenchConfig", "compare_lm_throughput", "register"]

INSTALL_HINT = "pip install 'attnkit[hf]'  (or: pip install transformers)"


@dataclass(frozen=True)
class LMBenchConfig:
    """The shared model and batch configuration."""

    d_model: int = 256  # width
    num_layers: int = 4  # blocks
    num_heads: int = 4  # attention heads
    seq_len: int = 256  # tokens per sequence (= context length)
    batch_size: int = 8  # sequences per step
    vocab_size: int = 8192  # vocabulary
    dropout: float = 0.0  # embedding / residual / attention-weight dropout in both models
    steps: int = 5  # timed training steps per round
    rounds: int = 3  # alternating measurement rounds
    device: str = "cpu"  # "cpu" or "cuda" (bf16 autocast on CUDA for both)


def _attnkit_model(cfg: LMBenchConfig) -> nn.Module:
    from attnkit.models import ModelConfig, build_decoder_lm

    return build_decoder_lm(ModelConfig(
        d_model=cfg.d_model, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
        d_ff=4 * cfg.d_model, dropout=cfg.dropout, attention_dropout=cfg.dropout,
        mlp_dropout=0.0,  # GPT-2 drops the MLP output (the residual dropout), not its hidden layer
        max_length=cfg.seq_len, positional="learned", norm="layernorm", mlp="gelu"),
        vocab_size=cfg.vocab_size)


def _hf_model(cfg: LMBenchConfig) -> nn.Module:
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as err:
        raise ImportError(f"the GPT-2 comparison needs transformers: {INSTALL_HINT}") from err
    config = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.seq_len, n_embd=cfg.d_model,
                        n_layer=cfg.num_layers, n_head=cfg.num_heads,
                        n_inner=4 * cfg.d_model, activation_function="gelu",
                        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                        attn_pdrop=cfg.dropout, tie_word_embeddings=True,
                        bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(config)


def _step_fn(model: nn.Module, tokens: torch.Tensor, *, hf: bool, device: torch.device
             ) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    use_bf16 = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(inputs).logits if hf else model(inputs)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                   labels.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _time(step: Callable[[], None], steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def compare_lm_throughput(cfg: LMBenchConfig | None = None) -> dict[str, Any]:
    """Training tokens per second of both models (median over alternating rounds)."""
    cfg = cfg or LMBenchConfig()
    device = torch.device(cfg.device)
    torch.manual_seed(0)
    models = {"attnkit": _attnkit_model(cfg).to(device), "hf_gpt2": _hf_model(cfg).to(device)}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    tokens = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.seq_len + 1), device=device)
    steps = {name: _step_fn(m.train(), tokens, hf=name == "hf_gpt2", device=device)
             for name, m in models.items()}
    for step in steps.values():  # warm up (allocator, kernels)
        step()
        step()
    per_round: dict[str, list[float]] = {name: [] for name in models}
    tokens_per_round = cfg.steps * cfg.batch_size * cfg.seq_len
    order = list(steps)
    for round_index in range(cfg.rounds):
        # Alternate who goes first (ABBA), so a load change inside a round favours neither.
        for name in order if round_index % 2 == 0 else order[::-1]:
            per_round[name].append(tokens_per_round / _time(steps[name], cfg.steps, device))
    result = {name: statistics.median(v) for name, v in per_round.items()}
    return {"config": asdict(cfg), "parameters": params, "tokens_per_s": result,
            "rounds": per_round, "ratio_attnkit_over_hf": result["attnkit"] / result["hf_gpt2"],
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def _format(report: dict[str, Any]) -> str:
    c = report["config"]
    lines = [f"decoder LM training throughput ({c['device']}, {report['threads']} threads): "
             f"d_model {c['d_model']}, {c['num_layers']} layers, {c['num_heads']} heads, "
             f"seq {c['seq_len']}, batch {c['batch_size']}, vocab {c['vocab_size']}, "
             f"dropout {c['dropout']}"]
    for name, value in report["tokens_per_s"].items():
        rounds = ", ".join(f"{v:,.0f}" for v in report["rounds"][name])
        lines.append(f"  {name:<8} {value:>10,.0f} tokens/s  ({report['parameters'][name]:,} "
                     f"parameters; rounds: {rounds})")
    lines.append(f"  attnkit / HF GPT-2 = {report['ratio_attnkit_over_hf']:.3f}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    import json

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = LMBenchConfig(d_model=args.d_model, num_layers=args.layers, num_heads=args.heads,
                        seq_len=args.seq_len, batch_size=args.batch_size,
                        vocab_size=args.vocab_size, dropout=args.dropout, steps=args.steps,
                        rounds=args.rounds, device=args.device)
    report = compare_lm_throughput(cfg)
    print(_format(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    d = LMBenchConfig()
    p.add_argument("--d-model", type=int, default=d.d_model, dest="d_model")
    p.add_argument("--layers", type=int, default=d.num_layers)
    p.add_argument("--heads", type=int, default=d.num_heads)
    p.add_argument("--seq-len", type=int, default=d.seq_len, dest="seq_len")
    p.add_argument("--batch-size", type=int, default=d.batch_size, dest="batch_size")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, dest="vocab_size")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.set_defaults(handler=_run)


def register(suites: Any) -> None:
    """``attnkit bench lm-throughput``."""
    p = suites.add_parser("lm-throughput", help="decoder LM training tokens/s: attnkit vs "
                          "Hugging Face GPT-2 (needs the hf extra)",
                          description=__doc__.split("\n\n")[0] if __doc__ else None)
    _add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnkit.bench.lm_throughput")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ImportError as err:
        print(f"error: {err}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
