"""Small vocabularies for the text tasks: characters (Shakespeare) and words (translation).

Id 0 is always padding (``Task.pad_id``); id 1 stands for anything unseen when the vocabulary was
built. Word vocabularies add begin/end-of-sequence ids for sequence-to-sequence targets.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BOS", "EOS", "PAD", "UNK", "CharVocab", "WordVocab", "detokenize", "word_tokens"]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"

# A word is a run of letters/digits (apostrophes inside words kept: "'tis", "don't"); every other
# non-space character is a token of its own.
_WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
# No space before closing punctuation, none after opening punctuation, when joining tokens.
_SPACE_BEFORE_CLOSER = re.compile(r" ([,.;:!?)\]»”’])")
_SPACE_AFTER_OPENER = re.compile(r"([(\[«“¿¡]) ")


def word_tokens(text: str) -> list[str]:
    """Split text into words and single punctuation marks: ``"Hi, you!" -> [Hi , you !]``."""
    return _WORD.findall(text)


def detokenize(tokens: Iterable[str]) -> str:
    """Join word tokens back into readable text (inverse of :func:`word_tokens` up to spacing)."""
    text = " ".join(tokens)
    text = _SPACE_BEFORE_CLOSER.sub(r"\1", text)
    return _SPACE_AFTER_OPENER.sub(r"\1", text)


@dataclass(frozen=True)
class CharVocab:
    """Character-level vocabulary: id 0 pad, id 1 unknown, then the characters in sorted order."""

    chars: tuple[str, ...]  # known characters; char chars[i] has id i + 2

    @classmethod
    def build(cls, text: str) -> CharVocab:
        return cls(tuple(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars) + 2

    def encode_array(self, text: str) -> np.ndarray:
        """(len(text),) int64 ids; fast for whole books (a lookup table over code points)."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        top = max([ord(c) for c in self.chars] + [int(codes.max()) if codes.size else 0])
        table = np.ones(top + 1, dtype=np.int64)  # default: unknown (1)
        for i, char in enumerate(self.chars):
            table[ord(char)] = i + 2
        return table[codes]

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text; padding is dropped and unknown ids become U+FFFD."""
        out = []
        for i in ids:
            i = int(i)
            if i == 0:
                continue
            out.append(self.chars[i - 2] if 2 <= i < self.size else "\ufffd")
        return "".join(out)


@dataclass(frozen=True)
class WordVocab:
    """Word-level vocabulary: ids 0-3 are pad, unknown, begin and end; then words by frequency."""

    words: tuple[str, ...]  # known words; words[i] has id i + 4

    SPECIALS = (PAD, UNK, BOS, EOS)
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], *, max_size: int, min_count: int = 1,
              ) -> WordVocab:
        """The ``max_size - 4`` most frequent tokens seen at least ``min_count`` times.

        Ties in frequency are broken alphabetically so that the vocabulary is deterministic.
        """
        if max_size <= len(cls.SPECIALS):
            raise ValueError(f"max_size must exceed the {len(cls.SPECIALS)} special tokens, "
                             f"got {max_size}")
        counts: Counter[str] = Counter()
        for tokens in sentences:
            counts.update(tokens)
        ranked = sorted((w for w, c in counts.items() if c >= min_count),
                        key=lambda w: (-counts[w], w))
        return cls(tuple(ranked[: max_size - len(cls.SPECIALS)]))

    @property
    def size(self) -> int:
        return len(self.words) + len(self.SPECIALS)

    def _index(self) -> dict[str, int]:
        # Built lazily and kept on the frozen instance (object.__setattr__ bypasses frozen).
        index = self.__dict__.get("_index_cache")
        if index is None:
            index = {w: i + len(self.SPECIALS) for i, w in enumerate(self.words)}
            object.__setattr__(self, "_index_cache", index)
        return index

    def encode_tokens(self, tokens: Sequence[str]) -> list[int]:
        index = self._index()
        return [index.get(t, self.unk_id) for t in tokens]

    def encode(self, text: str) -> list[int]:
        """Text to ids (no begin/end ids; callers add them where a format needs them)."""
        return self.encode_tokens(word_tokens(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text, stopping at the first end id; pad and begin ids are dropped."""
        tokens = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            tokens.append(self.words[i - 4] if 4 <= i < self.size else UNK)
        return detokenize(tokens)
