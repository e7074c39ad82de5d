"""The checkpoint folder's own tokenizer and image processor (transformers / tokenizers).

Nothing here is hand-written: text is tokenized by the folder's tokenizer (``AutoTokenizer``, or
the bare ``tokenizer.json`` through the tokenizers library), images are resized and normalized
by its ``AutoImageProcessor``. Everything is read from the folder (``local_files_only``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["load_image", "load_image_processor", "load_tokenizer"]

_INSTALL = "pip install 'attnkit[hf]'"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"tokenizers and image processors need transformers: {_INSTALL}") \
            from err
    return transformers


def load_tokenizer(folder: str | os.PathLike[str]) -> Any:
    """The folder's tokenizer: a transformers tokenizer when it has ``tokenizer_config.json``,
    else a ``tokenizers.Tokenizer`` from ``tokenizer.json``; FileNotFoundError when neither."""
    folder = Path(folder)
    if (folder / "tokenizer_config.json").is_file():
        return _transformers().AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if (folder / "tokenizer.json").is_file():
        _transformers()
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    raise FileNotFoundError(f"{str(folder)!r} has no tokenizer (tokenizer_config.json or "
                            f"tokenizer.json); save one there with tokenizer.save_pretrained, "
                            f"or give token ids")


def load_image_processor(folder: str | os.PathLike[str]) -> Any:
    """The folder's image processor (``preprocessor_config.json``)."""
    folder = Path(folder)
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no preprocessor_config.json; save the "
                                f"model's image processor there with save_pretrained")
    return _transformers().AutoImageProcessor.from_pretrained(folder, local_files_only=True)


def load_image(path: str | os.PathLike[str], processor: Any) -> Tensor:
    """An image file, resized and normalized by ``processor`` -> pixel values (C, H, W)."""
    from PIL import Image

    with Image.open(path) as image:
        pixels = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
    return torch.as_tensor(pixels)[0].float()
