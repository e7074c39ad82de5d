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


def tiny_bert(*, classifier: bool = True, **overrides: Any) -> Any:
    options: dict[str, Any] = dict(vocab_size=89, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=48,
                                   max_position_embeddings=40, num_labels=3, pad_token_id=0)
    options.update(overrides)
    config = transformers.BertConfig(**options)
    cls = transformers.BertForSequenceClassification if classifier else transformers.BertModel
    return randomize(cls(config))


def tiny_vit(*, classifier: bool = True, **overrides: Any) -> Any:
    options: dict[str, Any] = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=48, num_labels=5)
    options.update(overrides)
    config = transformers.ViTConfig(**options)
    cls = transformers.ViTForImageClassification if classifier else transformers.ViTModel
    return randomize(cls(config))


def padded_batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Token ids (B, L) with real ids in 1..vocab-1 up to each length and pad id 0 after, the
    HF attention mask (B, L) and the lengths (B,)."""
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), longest), generator=generator)
    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, 0), mask.long(), torch.tensor(lengths)
