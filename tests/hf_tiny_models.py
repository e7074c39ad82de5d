"""Tiny random-weight Hugging Face models, built from configs (never downloaded).

Import from tests (``from hf_tiny_models import ARCHITECTURES``) after
``pytest.importorskip("transformers", ...)``. Each :class:`TinyArchitecture` builds a model,
saves it with ``save_pretrained`` and reloads it under an attention implementation, and makes a
padded batch the way the model family is used: left padding for decoders (as for generation),
right padding for encoders.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

INSTALL_REASON = "pip install 'attnkit[hf]'"
VOCAB = 97
LENGTH = 12


@dataclass(frozen=True)
class TinyArchitecture:
    name: str
    auto_class: str  # transformers Auto* class that loads it
    config: Callable[[], Any]  # builds the config
    decoder: bool  # causal LM: left padding, generate()
    features: tuple[str, ...] = ()  # what it exercises: "gqa", "sliding window", "softcap", ...
    sdpa_supported: bool = True  # transformers' sdpa refuses softcap
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path, seed: int = 0) -> Path:
        import transformers

        torch.manual_seed(seed)
        model_class = getattr(transformers, self.auto_class)
        model = model_class.from_config(self.config())
        model.save_pretrained(folder)
        return folder

    def load(self, folder: Path, implementation: str) -> nn.Module:
        import transformers

        model_class = getattr(transformers, self.auto_class)
        return model_class.from_pretrained(folder, attn_implementation=implementation).eval()

    def batch(self, seed: int = 1) -> tuple[dict[str, Tensor], Tensor]:
        """Model inputs and the (B, L) bool of real positions (whose outputs must agree)."""
        generator = torch.Generator().manual_seed(seed)
        if self.auto_class == "AutoModelForImageClassification":
            pixels = torch.randn(2, 3, 32, 32, generator=generator)
            return {"pixel_values": pixels}, torch.ones(2, 1, dtype=torch.bool)
        ids = torch.randint(3, VOCAB, (3, LENGTH), generator=generator)
        real = torch.ones(3, LENGTH, dtype=torch.bool)
        pad = [0, 4, 7]
        for row, count in enumerate(pad):
            if self.decoder:
                real[row, :count] = False  # left padding
            else:
                real[row, LENGTH - count:] = False  # right padding
        ids = ids.masked_fill(~real, 0)
        return {"input_ids": ids, "attention_mask": real.long()}, real


def _gpt2() -> Any:
    from transformers import GPT2Config

    return GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2)


def _bert() -> Any:
    from transformers import BertConfig

    return BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                      intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64,
                      num_labels=3, pad_token_id=0, initializer_range=0.2)


def _vit() -> Any:
    from transformers import ViTConfig

    return ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                     intermediate_size=128, image_size=32, patch_size=8, num_labels=5,
                     initializer_range=0.2)


def _decoder_common() -> dict[str, Any]:
    return dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                initializer_range=0.2, tie_word_embeddings=False)


def _llama() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**_decoder_common())


def _mistral() -> Any:
    from transformers import MistralConfig

    return MistralConfig(**_decoder_common(), sliding_window=4)


def _qwen2() -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(**_decoder_common(), use_sliding_window=True, sliding_window=4,
                       max_window_layers=1, layer_types=["full_attention", "sliding_attention"])


def _gemma2() -> Any:
    from transformers import Gemma2Config

    common = _decoder_common()
    common["num_hidden_layers"] = 2
    return Gemma2Config(**common, head_dim=16, sliding_window=4, attn_logit_softcapping=2.0,
                        final_logit_softcapping=30.0, query_pre_attn_scalar=16,
                        layer_types=["sliding_attention", "full_attention"])


ARCHITECTURES = [
    TinyArchitecture("gpt2", "AutoModelForCausalLM", _gpt2, decoder=True,
                     features=("causal", "left padding", "Conv1D projections")),
    TinyArchitecture("bert", "AutoModelForSequenceClassification", _bert, decoder=False,
                     features=("bidirectional", "right padding")),
    TinyArchitecture("vit", "AutoModelForImageClassification", _vit, decoder=False,
                     features=("bidirectional", "no mask")),
    TinyArchitecture("llama", "AutoModelForCausalLM", _llama, decoder=True,
                     features=("causal", "GQA 4/2", "RoPE", "left padding")),
    TinyArchitecture("mistral", "AutoModelForCausalLM", _mistral, decoder=True,
                     features=("sliding window 4", "GQA 4/2", "left padding")),
    TinyArchitecture("qwen2", "AutoModelForCausalLM", _qwen2, decoder=True,
                     features=("full + sliding-window layers", "GQA 4/2", "left padding")),
    TinyArchitecture("gemma2", "AutoModelForCausalLM", _gemma2, decoder=True,
                     features=("softcap 2.0", "sliding window 4", "GQA 4/2", "custom scaling"),
                     sdpa_supported=False),
]

BY_NAME = {arch.name: arch for arch in ARCHITECTURES}
