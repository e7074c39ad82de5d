"""Logit parity of attnkit's loaded models with transformers' own, on the same weights.

    from attnkit.hf.parity import compare
    compare(hf_model, input_ids=ids, attention_mask=mask)   # max |ours - theirs| / max |theirs|

``python -m attnkit.hf.parity`` prints the table in docs/pretrained.md: GPT-2 small, BERT base
(padded batch) and ViT base/16 sized models with transformers' random initialization (no
download), float32, CPU. The lengths (BERT's padding) and the image batch are fixed by a seed.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.hf.load import load

__all__ = ["compare", "main"]


def _ours(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    if "pixel_values" in inputs:
        return model(inputs["pixel_values"])
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    lengths = None if mask is None else mask.sum(-1)
    return model(ids) if lengths is None else model(ids, lengths)


def _theirs(output: Any) -> Tensor:
    for name in ("logits", "pooler_output", "last_hidden_state"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise ValueError(f"no logits in {type(output).__name__}")


def compare(hf_model: nn.Module, **inputs: Tensor) -> float:
    """Largest absolute logit difference relative to the largest HF logit (float32, eval).

    For a language model every position counts; with an ``attention_mask`` the positions
    after each sequence's length (padding) are left out.
    """
    hf_model.eval()
    ours = load(hf_model)
    with torch.no_grad():
        theirs, mine = _theirs(hf_model(**inputs)), _ours(ours, inputs)
    mask = inputs.get("attention_mask")
    if theirs.dim() == 3 and mask is not None:  # (B, L, V): real positions only
        theirs, mine = theirs[mask.bool()], mine[mask.bool()]
    return float((mine - theirs).abs().max() / theirs.abs().max())


def _rows(length: int, batch: int, seed: int) -> list[tuple[str, str, float, float]]:
    import transformers

    generator = torch.Generator().manual_seed(seed)
    rows = []
    lengths = torch.randint(length // 4, length + 1, (batch,), generator=generator)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    bert, vit = transformers.BertConfig(), transformers.ViTConfig()
    bert.num_labels, vit.num_labels = 3, 10  # (PretrainedConfig's generic keyword)
    cases: list[tuple[str, Any, dict[str, Tensor]]] = [
        ("GPT-2 small (GPT2LMHeadModel)", transformers.GPT2LMHeadModel(
            transformers.GPT2Config()),
         {"input_ids": torch.randint(0, 50257, (batch, length), generator=generator)}),
        ("BERT base (BertForSequenceClassification), padded batch",
         transformers.BertForSequenceClassification(bert),
         {"input_ids": torch.randint(1, 30522, (batch, length), generator=generator) * mask,
          "attention_mask": mask}),
        ("ViT base/16, 224 px (ViTForImageClassification)",
         transformers.ViTForImageClassification(vit),
         {"pixel_values": torch.randn(batch, 3, 224, 224, generator=generator)}),
    ]
    for name, model, inputs in cases:
        started = time.perf_counter()
        error = compare(model, **inputs)
        shape = "x".join(str(s) for s in next(iter(inputs.values())).shape)
        rows.append((name, shape, error, time.perf_counter() - started))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=128, help="text length (default 128)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)  # transformers' random initialization
    print("| model | input | max relative logit error | seconds (build + load + 2 forwards) |")
    print("|---|---|---:|---:|")
    for name, shape, error, seconds in _rows(args.length, args.batch, args.seed):
        print(f"| {name} | {shape} | {error:.1e} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
