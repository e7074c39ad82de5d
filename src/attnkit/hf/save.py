"""``attnkit.hf.save``: an attnkit model -> a folder transformers loads with ``from_pretrained``.

    attnkit.hf.save(model, "out/gpt2-attnkit")
    AutoModelForCausalLM.from_pretrained("out/gpt2-attnkit")   # same logits

The architecture follows from the model's structure: a DecoderLM is written as GPT-2, a
classifier over tokens as BERT, one over image patches as ViT. A model using parts the target
architecture lacks (RoPE, GQA, other attention kinds, RMSNorm, ...) is refused with the part
named.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from attnkit.hf import bert, gpt2, vit
from attnkit.hf.checkpoint import HFCheckpoint, write_checkpoint
from attnkit.models.classifier import TransformerClassifier
from attnkit.models.decoder import DecoderLM
from attnkit.models.vit import PatchEmbedding

__all__ = ["save", "to_checkpoint"]


def to_checkpoint(model: nn.Module) -> HFCheckpoint:
    """The Hugging Face config and tensors for ``model`` (without writing anything)."""
    model = getattr(model, "module", model)  # DDP
    if isinstance(model, DecoderLM):
        return gpt2.to_hf(model)
    if isinstance(model, TransformerClassifier):
        if isinstance(model.embed, PatchEmbedding):
            return vit.to_hf(model)
        return bert.to_hf(model)
    raise ValueError(f"cannot write {type(model).__name__} as a Hugging Face checkpoint; "
                     f"supported: DecoderLM (as GPT-2), TransformerClassifier over tokens (as "
                     f"BERT) or image patches (as ViT)")


def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into folder ``path`` (atomically); other
    files already there (a tokenizer) are kept. Returns the folder."""
    return write_checkpoint(to_checkpoint(model), path)
