"""Byte-level BPE subword tokenizers (Hugging Face ``tokenizers``), trained once and cached.

Byte-level BPE (Radford et al., 2019; Sennrich et al., 2016) starts from the 256 byte values, so
every string is encodable and decoding gives back exactly the input text: no unknown token is ever
needed, whatever the script or accent. Ids 0-3 are pad, unknown (never produced; kept so ids line
up with :class:`attnkit.tasks.tokenizers.WordVocab`), begin and end of sequence.

The trained tokenizer is cached as JSON under ``<cache>/<subdir>/bpe-<key>.json`` where the key
hashes the training text and the settings, so a different split or size never reuses a stale file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnkit.tasks.sources import atomic_write_bytes, import_package
from attnkit.tasks.tokenizers import BOS, EOS, PAD, UNK

__all__ = ["SubwordTokenizer", "train_subword_tokenizer"]

_FORMAT_VERSION = 1  # bump when the tokenizer recipe below changes, to invalidate caches


def _tokenizers_module() -> Any:
    return import_package("tokenizers", needed_for="subword tokenization")


class SubwordTokenizer:
    """Text <-> ids with a trained byte-level BPE model; lossless: ``decode(encode(t)) == t``."""

    SPECIALS = (PAD, UNK, BOS, EOS)
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        for i, token in enumerate(self.SPECIALS):
            if tokenizer.token_to_id(token) != i:
                raise ValueError(f"special token {token} must have id {i}, has "
                                 f"{tokenizer.token_to_id(token)}")

    @classmethod
    def from_json(cls, text: str) -> SubwordTokenizer:
        return cls(_tokenizers_module().Tokenizer.from_str(text))

    def to_json(self) -> str:
        return str(self._tokenizer.to_str())

    @property
    def size(self) -> int:
        return int(self._tokenizer.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        """Text to ids (no begin/end ids; callers add them where a format needs them)."""
        return list(self._tokenizer.encode(text).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._tokenizer.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text, stopping at the first end id; pad, begin and unknown ids are dropped."""
        kept: list[int] = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= len(self.SPECIALS):
                kept.append(i)
        return str(self._tokenizer.decode(kept, skip_special_tokens=True))

    def tokens(self, text: str) -> list[str]:
        """The subword pieces of ``text`` as readable strings (for labels in explanations)."""
        return [self.decode([i]) for i in self.encode(text)]


def _build(texts: Sequence[str], vocab_size: int, min_frequency: int) -> SubwordTokenizer:
    tk = _tokenizers_module()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    # No normalizer and no prefix space: the byte-level round trip must reproduce the text exactly.
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=list(SubwordTokenizer.SPECIALS),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return SubwordTokenizer(tokenizer)


def train_subword_tokenizer(texts: Sequence[str], *, vocab_size: int, cache_dir: Path | None,
                            name: str, min_frequency: int = 2) -> SubwordTokenizer:
    """A byte-level BPE tokenizer with ``vocab_size`` ids (specials and 256 bytes included),
    trained on ``texts``; read from / written to ``cache_dir`` when given."""
    minimum = len(SubwordTokenizer.SPECIALS) + 256
    if vocab_size <= minimum:
        raise ValueError(f"vocab_size must exceed the {minimum} special and byte tokens, "
                         f"got {vocab_size}")
    if not texts:
        raise ValueError("cannot train a tokenizer on no text")
    digest = hashlib.sha256(f"v{_FORMAT_VERSION}|{vocab_size}|{min_frequency}|".encode())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    path = None if cache_dir is None else cache_dir / f"{name}-bpe-{digest.hexdigest()[:16]}.json"
    if path is not None and path.is_file():
        try:
            return SubwordTokenizer.from_json(path.read_text(encoding="utf-8"))
        except Exception:  # an unreadable cache of any kind: train again
            pass
    tokenizer = _build(texts, vocab_size, min_frequency)
    if path is not None:
        atomic_write_bytes(path, tokenizer.to_json().encode("utf-8"))
    return tokenizer
