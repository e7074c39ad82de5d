"""Models built from attention layers: blocks, families (encoder, decoder LM, seq2seq, ViT,
audio) and named presets. Modules receive their parts; builders wire them; presets fix numbers."""

from attnkit.models.audio import build_audio_transformer
from attnkit.models.blocks import TransformerBlock, TransformerStack
from attnkit.models.classifier import TransformerClassifier
from attnkit.models.config import ModelConfig
from attnkit.models.decoder import DecoderLM, build_decoder_lm
from attnkit.models.encoder import build_encoder_classifier
from attnkit.models.families import FAMILIES, build_model, default_family
from attnkit.models.generation import SamplingConfig
from attnkit.models.presets import DEFAULT_PRESET, PRESETS, get_preset
from attnkit.models.seq2seq import Seq2SeqTransformer, build_seq2seq
from attnkit.models.vit import build_vit
from attnkit.models.weight_layout import set_weight_layout, weight_layout

__all__ = ["DEFAULT_PRESET", "FAMILIES", "PRESETS", "DecoderLM", "ModelConfig", "SamplingConfig",
           "Seq2SeqTransformer", "TransformerBlock", "TransformerClassifier", "TransformerStack",
           "build_audio_transformer", "build_decoder_lm", "build_encoder_classifier",
           "build_model", "build_seq2seq", "build_vit", "default_family", "get_preset",
           "set_weight_layout", "weight_layout"]
