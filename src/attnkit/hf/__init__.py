"""Hugging Face bridge: attnkit as a transformers attention implementation, capture on HF models.

Importing this package does not import transformers; :func:`register` does (``pip install
'attnkit[hf]'``).
"""

from attnkit.hf.capture import attach_probes, find_hf_attention_modules
from attnkit.hf.engine_backend import IMPLEMENTATION, attention_forward, register
from attnkit.hf.mask_translation import translate_mask
from attnkit.hf.swap import SwapReport, swap_attention

__all__ = ["IMPLEMENTATION", "SwapReport", "attach_probes", "attention_forward",
           "find_hf_attention_modules", "register", "swap_attention", "translate_mask"]
