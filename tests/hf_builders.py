"""Tiny random-weight Hugging Face models for the hf tests: built from configs, never downloaded.

Every parameter (norms included) is redrawn from N(0, 0.3) / N(1, 0.3), so the logits are far
from the near-uniform output of the default 0.02 init and a wrong mapping cannot hide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="pip install 'attnkit[hf]'")


def randomize(model: Any, seed: int = 0) -> Any:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.3
            is_norm_scale = p.dim() == 1 and name.endswith("weight")
            p.copy_(noise + 1.0 if is_norm_scale else noise)
    return model.eval()


def tiny_gpt2(**overrides: Any) -> Any:
    options: dict[str, Any] = dict(vocab_size=97, n_positions=48, n_embd=32, n_layer=2,
                                   n_head=4, bos_token_id=0, eos_token_id=0)
    options.update(overrides)
    return randomize(transformers.GPT2LMHeadModel(transformers.GPT2Config(**options)))


def save(model: Any, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())
