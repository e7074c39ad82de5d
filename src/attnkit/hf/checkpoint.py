"""Reading and writing Hugging Face checkpoint folders without transformers or pickle.

A folder as ``save_pretrained`` writes it holds ``config.json`` and either ``model.safetensors``
or shards listed in ``model.safetensors.index.json``. Tensors are read with the safetensors
library only; ``pytorch_model.bin`` (a pickle) is refused, never unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

__all__ = ["HFCheckpoint", "read_checkpoint", "write_checkpoint"]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


@dataclass
class HFCheckpoint:
    """A checkpoint in Hugging Face naming: its config (a dict) and its tensors by name."""

    config: dict[str, Any]
    tensors: dict[str, Tensor]

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "?"))

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])


def _read_safetensors(files: list[Path]) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[key] = f.get_tensor(key)
    return tensors


def _read_folder(folder: Path) -> HFCheckpoint:
    config_path = folder / CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {CONFIG}; point at a folder written by "
                                f"save_pretrained (config.json + model.safetensors)")
    config = json.loads(config_path.read_text())
    if (folder / WEIGHTS).is_file():
        files = [folder / WEIGHTS]
    elif (folder / INDEX).is_file():
        index = json.loads((folder / INDEX).read_text())
        files = [folder / name for name in sorted(set(index["weight_map"].values()))]
    elif (folder / "pytorch_model.bin").is_file():
        raise ValueError(f"{str(folder)!r} holds only pytorch_model.bin, a pickle that attnkit "
                         f"never loads; convert it once with transformers: "
                         f"AutoModel.from_pretrained(path).save_pretrained(path) writes "
                         f"model.safetensors")
    else:
        raise FileNotFoundError(f"{str(folder)!r} has no {WEIGHTS} or {INDEX}")
    return HFCheckpoint(config=config, tensors=_read_safetensors(files))


def _read_live(model: nn.Module) -> HFCheckpoint:
    """A live transformers model, through the names ``save_pretrained`` writes.

    Recent transformers renames some modules in memory (e.g. ViT's ``attention.attention.query``
    becomes ``attention.q_proj``) and converts back when saving, so the on-disk names are the
    stable contract: the model is written to a temporary folder and read back from it.
    """
    save_pretrained = getattr(model, "save_pretrained", None)
    if not callable(save_pretrained) or not hasattr(model, "config"):
        raise TypeError(f"expected a transformers PreTrainedModel (with .config and "
                        f".save_pretrained), got {type(model).__name__}")
    with tempfile.TemporaryDirectory(prefix="attnkit-hf-") as folder:
        save_pretrained(folder)
        return _read_folder(Path(folder))


def read_checkpoint(source: str | os.PathLike[str] | nn.Module) -> HFCheckpoint:
    """A checkpoint folder (path) or a live transformers model -> :class:`HFCheckpoint`."""
    if isinstance(source, nn.Module):
        return _read_live(source)
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder at {str(folder)!r}")
    return _read_folder(folder)


def write_checkpoint(checkpoint: HFCheckpoint, folder: str | os.PathLike[str]) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``folder``, all or nothing.

    The files are written into a temporary sibling folder that is renamed into place; an
    existing folder's other files (a tokenizer, an image processor) are kept.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        if folder.is_dir():
            for item in folder.iterdir():
                if item.name not in (CONFIG, WEIGHTS, INDEX) and item.is_file():
                    shutil.copy2(item, tmp / item.name)
        tensors = {k: v.detach().cpu().contiguous() for k, v in checkpoint.tensors.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(checkpoint.config, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
