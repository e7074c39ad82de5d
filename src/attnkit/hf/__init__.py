"""Hugging Face bridge: checkpoints into attnkit's own models and back.

``load`` reads a folder written by ``save_pretrained`` (or a live transformers model) into an
attnkit model; ``save`` writes an attnkit model as a folder transformers loads. Reading folders
needs only safetensors; transformers is needed for live models and for tokenizers
(``pip install 'attnkit[hf]'``).
"""

from attnkit.hf.load import load
from attnkit.hf.preprocess import load_image, load_image_processor, load_tokenizer
from attnkit.hf.save import save

__all__ = ["load", "load_image", "load_image_processor", "load_tokenizer", "save"]
