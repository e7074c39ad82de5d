"""Hugging Face bridge: checkpoints into attnkit's own models and back, and attnkit as an
attention implementation inside transformers' models.

``load`` reads a folder written by ``save_pretrained`` (or a live transformers model) into an
attnkit model; ``save`` writes an attnkit model as a folder transformers loads. ``register``
makes ``attn_implementation="attnkit"`` available to transformers; ``swap_attention`` puts any
attnkit kind into a pretrained model. Importing this package does not import transformers:
reading folders needs only safetensors; live models, tokenizers and :func:`register` need it
(``pip install 'attnkit[hf]'``).
"""

from attnkit.hf.capture import attach_probes, find_hf_attention_modules
from attnkit.hf.engine_backend import IMPLEMENTATION, attention_forward, register
from attnkit.hf.load import load
from attnkit.hf.mask_translation import translate_mask
from attnkit.hf.preprocess import load_image, load_image_processor, load_tokenizer
from attnkit.hf.save import save
from attnkit.hf.swap import SwapReport, swap_attention

__all__ = ["IMPLEMENTATION", "SwapReport", "attach_probes", "attention_forward",
           "find_hf_attention_modules", "load", "load_image", "load_image_processor",
           "load_tokenizer", "register", "save", "swap_attention", "translate_mask"]
