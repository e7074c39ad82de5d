"""``attnkit.hf.load``: a Hugging Face checkpoint (folder or live model) -> an attnkit model.

    model = attnkit.hf.load("path/to/gpt2")          # DecoderLM, same logits as GPT2LMHeadModel
    model = attnkit.hf.load(hf_model)                # a live transformers model works too

Weights are read with safetensors (never pickle); transformers itself is not needed to load a
folder. The model comes back in eval mode, as ``from_pretrained`` returns it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from torch import nn

from attnkit.hf import bert, gpt2, vit
from attnkit.hf.checkpoint import HFCheckpoint, read_checkpoint

__all__ = ["CONVERTERS", "load"]

#: model_type (from config.json) -> converter to an attnkit model.
CONVERTERS: dict[str, Callable[[HFCheckpoint], nn.Module]] = {
    "gpt2": gpt2.from_hf,
    "bert": bert.from_hf,
    "vit": vit.from_hf,
}


def load(source: str | os.PathLike[str] | nn.Module) -> nn.Module:
    """A checkpoint folder (``config.json`` + safetensors) or a transformers model -> attnkit.

    GPT-2 -> :class:`~attnkit.models.DecoderLM`; BERT and ViT ->
    :class:`~attnkit.models.TransformerClassifier` (with the classification head when the
    checkpoint has one, else the pooled output). Unsupported architectures or config options
    raise ``ValueError`` naming them and what is supported.
    """
    checkpoint = read_checkpoint(source)
    model_type = checkpoint.model_type
    if model_type not in CONVERTERS:
        raise ValueError(f"model_type {model_type!r} (architectures {checkpoint.architectures}) "
                         f"is not supported; attnkit.hf.load supports {sorted(CONVERTERS)}")
    return CONVERTERS[model_type](checkpoint)
