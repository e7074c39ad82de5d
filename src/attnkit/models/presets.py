"""Named presets: functions that fix the numbers of a :class:`ModelConfig`.

A preset says nothing about the family; the same numbers build a ViT, an LM or a seq2seq model.
``--set model.<field>=...`` overrides any number after the preset is applied.
"""

from __future__ import annotations

from collections.abc import Callable

from attnkit.models.config import ModelConfig

__all__ = ["DEFAULT_PRESET", "PRESETS", "get_preset", "register_preset"]

PRESETS: dict[str, tuple[Callable[[], ModelConfig], str]] = {}


def register_preset(name: str, summary: str
                    ) -> Callable[[Callable[[], ModelConfig]], Callable[[], ModelConfig]]:
    def wrap(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
        PRESETS[name] = (fn, summary)
        return fn

    return wrap


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name][0]()


@register_preset("classic_base", "Transformer base (Vaswani et al., 2017): 512 wide, 8 heads, "
                 "2048 MLP, 6 layers, dropout 0.1, post-norm, sinusoidal positions")
def classic_base() -> ModelConfig:
    return ModelConfig(d_model=512, num_heads=8, d_ff=2048, num_layers=6, dropout=0.1,
                       norm_first=False, positional="sinusoidal")


@register_preset("vit_tiny_digits", "ViT for 8x8 digits: 2x2 patches (16 tokens), 64 wide, "
                 "4 heads, 3 layers, mean pooling (the demo: >=97% test accuracy in a minute)")
def vit_tiny_digits() -> ModelConfig:
    # 2x2 patches give 16 tokens, enough for an attention map to say something about the image
    # (4x4 patches gave a 2x2 grid); a narrower model keeps the run near a minute on one core.
    return ModelConfig(d_model=64, num_heads=4, d_ff=128, num_layers=3, dropout=0.1,
                       patch_size=2, pooling="mean")


@register_preset("vit_small", "ViT for 28x28 images: 4x4 patches, 128 wide, 4 heads, 4 layers")
def vit_small() -> ModelConfig:
    return ModelConfig(d_model=128, num_heads=4, d_ff=256, num_layers=4, dropout=0.1,
                       patch_size=4, pooling="cls")


@register_preset("encoder_small", "token classifier: 128 wide, 4 heads, 2 layers, mean pooling")
def encoder_small() -> ModelConfig:
    return ModelConfig(d_model=128, num_heads=4, d_ff=256, num_layers=2, dropout=0.1,
                       pooling="mean", max_length=2048)


@register_preset("audio_small", "frame classifier: 128 wide, 4 heads, 3 layers, mean pooling")
def audio_small() -> ModelConfig:
    return ModelConfig(d_model=128, num_heads=4, d_ff=256, num_layers=3, dropout=0.1,
                       pooling="mean", max_length=1024)


# The language-model presets use RoPE: no position table, so generation streams past the training
# context with the rolling cache and explanations take inputs longer than it.
@register_preset("lm_small", "character LM: 192 wide, 6 heads, 4 layers, RoPE (no length limit)")
def lm_small() -> ModelConfig:
    return ModelConfig(d_model=192, num_heads=6, d_ff=768, num_layers=4, dropout=0.1,
                       max_length=256, positional="rope")


@register_preset("seq2seq_small", "encoder-decoder: 128 wide, 4 heads, 2+2 layers, RoPE")
def seq2seq_small() -> ModelConfig:
    return ModelConfig(d_model=128, num_heads=4, d_ff=256, num_layers=2, dropout=0.1,
                       max_length=256, positional="rope")


@register_preset("tiny", "for tests: 32 wide, 2 heads, 1 layer, no dropout")
def tiny() -> ModelConfig:
    return ModelConfig(d_model=32, num_heads=2, d_ff=64, num_layers=1, dropout=0.0,
                       max_length=128)


#: The preset a family gets when none is named.
DEFAULT_PRESET = {"vit": "vit_small", "encoder": "encoder_small", "audio": "audio_small",
                  "decoder": "lm_small", "seq2seq": "seq2seq_small"}
