"""The typed configuration every model family is built from (numbers only; presets fill them).

Each field's type carries its allowed range or choices (``Annotated[int, Field(ge=1)]``,
``Literal[...]``); :mod:`attnkit.train.config` validates a whole run config against them with
pydantic before anything is built or written.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

from pydantic import Field

__all__ = ["ModelConfig"]

Positive = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


@dataclass
class ModelConfig:
    """Architecture numbers. A preset returns one; ``--set model.<field>=...`` overrides a field."""

    # None: the family the task gets by default (attnkit.models.default_family)
    family: Literal["vit", "encoder", "decoder", "seq2seq", "audio"] | None = None
    d_model: Positive = 128  # width of the residual stream
    num_heads: Positive = 4  # attention heads per layer
    num_layers: Positive = 4  # encoder (or decoder-only) layers
    num_decoder_layers: Positive | None = None  # seq2seq decoder layers (None: same as num_layers)
    d_ff: Positive = 512  # hidden width of the feed-forward MLP
    dropout: Probability = 0.1  # dropout on embeddings, residual branches and inside the MLP
    mlp_dropout: Probability | None = None  # dropout on the MLP hidden layer (None: as dropout)
    attention_dropout: Probability = 0.0  # dropout on attention weights (given to the layer if > 0)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # normalization of the residual blocks
    norm_eps: PositiveFloat = 1e-5  # epsilon of every norm (BERT / ViT checkpoints: 1e-12)
    # gelu: Linear-GELU(erf)-Linear; gelu_tanh: the tanh approximation (GPT-2);
    # swiglu: gated (Shazeer, 2020)
    mlp: Literal["gelu", "gelu_tanh", "swiglu"] = "gelu"
    norm_first: bool = True  # pre-norm residual blocks; False = post-norm (Vaswani et al., 2017)
    attention: str | list[str] = "mha"  # attention kind, or one kind per layer
    attention_options: dict[str, Any] = field(default_factory=dict)  # extra build_attention kwargs
    cross_attention: str = "mha"  # seq2seq: attention kind of the decoder's cross-attention
    positional: Literal["learned", "sinusoidal", "rope", "none"] = "learned"  # position encoding
    max_length: Positive = 512  # longest sequence the position table covers (tokens / audio)
    # classifiers: "cls" (a prepended class token), the "first" input token (BERT's [CLS]) or
    # "mean" over the valid tokens
    pooling: Literal["cls", "first", "mean"] = "cls"
    patch_size: Positive = 2  # ViT: side of a square image patch
    # ViT: "linear" (one projection per patch) or "conv" (a 3x3 convolution stem)
    patch_stem: Literal["linear", "conv"] = "linear"
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
