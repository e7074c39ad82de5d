"""The typed configuration every model family is built from (numbers only; presets fill them)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["ModelConfig"]


@dataclass
class ModelConfig:
    """Architecture numbers. A preset returns one; ``--set model.<field>=...`` overrides a field."""

    family: str | None = None  # vit, encoder, decoder, seq2seq or audio; None: from the task
    d_model: int = 128  # width of the residual stream
    num_heads: int = 4  # attention heads per layer
    num_layers: int = 4  # encoder (or decoder-only) layers
    num_decoder_layers: int | None = None  # seq2seq decoder layers (None: same as num_layers)
    d_ff: int = 512  # hidden width of the feed-forward MLP
    dropout: float = 0.1  # dropout on embeddings, residual branches and inside the MLP
    mlp_dropout: float | None = None  # dropout on the MLP hidden layer (None: same as dropout)
    attention_dropout: float = 0.0  # dropout on attention weights (passed to the layer if > 0)
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    norm_eps: float = 1e-5  # epsilon of every norm (BERT / ViT checkpoints: 1e-12)
    mlp: str = "gelu"  # "gelu" (erf), "gelu_tanh" (GPT-2) or "swiglu" (Shazeer, 2020)
    norm_first: bool = True  # pre-norm residual blocks; False = post-norm (Vaswani et al., 2017)
    attention: str | list[str] = "mha"  # attention kind, or one kind per layer
    attention_options: dict[str, Any] = field(default_factory=dict)  # extra build_attention kwargs
    cross_attention: str = "mha"  # seq2seq: attention kind of the decoder's cross-attention
    positional: str = "learned"  # "learned" | "sinusoidal" | "rope" | "none"
    max_length: int = 512  # longest sequence the position table covers (token / audio inputs)
    pooling: str = "cls"  # classifiers: "cls" (prepended class token), "first" token or "mean"
    patch_size: int = 2  # ViT: side of a square image patch
    patch_stem: str = "linear"  # ViT: "linear" (one projection per patch) or "conv" (3x3 stem)
    tie_embeddings: bool = True  # LM / seq2seq: output projection shares the token embedding
    bias: bool = True  # biases in linear layers and norms

    def attention_kinds(self, num_layers: int) -> list[str]:
        """One attention kind per layer, validated."""
        if isinstance(self.attention, str):
            return [self.attention] * num_layers
        kinds = list(self.attention)
        if len(kinds) != num_layers:
            raise ValueError(f"model.attention lists {len(kinds)} kinds ({kinds}) but the stack "
                             f"has {num_layers} layers; give one kind or one per layer")
        return kinds

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
