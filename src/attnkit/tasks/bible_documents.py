"""Byte-level Bible passages: which book is it from, and do two passages share a book?

LRA's text tasks (Tay et al., 2021) read documents byte by byte so that inputs are thousands of
tokens long: "Text" classifies 1-4K-byte reviews, "Retrieval" decides whether two documents are
related. The two tasks here build the same shapes from the World English Bible (or the
Reina-Valera 1909) that ships in Debian's SWORD packages (:mod:`attnkit.tasks.bible`):

- ``bible-books``: a passage of ``min_bytes..max_bytes`` consecutive bytes from one of the
  ``num_books`` longest books; the label is the book (10 classes by default, balanced).
- ``bible-retrieval``: two passages joined by a separator token; label 1 when both come from the
  same book (balanced), over every book with enough text. LRA encodes the two documents
  separately (a two-tower model); here one encoder reads the pair, so attention can compare
  them directly: the task is easier than LRA's at the same length.

Splits are disjoint by chapter: each book's chapters are dealt to train/val/test by a seeded
permutation, and a split's passages are windows of that split's chapters only (joined in canonical
order), so no test text was seen in training. Windows are drawn at random offsets (training
windows may overlap each other); the two passages of a same-book pair never overlap.

Inputs x: (L,) int64 byte tokens (1 + byte; ``SEPARATOR`` = 257 between the passages of a pair);
labels y: () int64.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from attnkit.tasks.base import Task, register_task
from attnkit.tasks.bible import load_parallel_verses
from attnkit.tasks.generated import draw_distinct, to_datasets

__all__ = ["BYTE_VOCAB_SIZE", "SEPARATOR", "book_streams", "load_bible_books",
           "load_bible_retrieval"]

SEPARATOR = 257  # between the two passages of a retrieval pair
BYTE_VOCAB_SIZE = 258  # padding, 256 bytes, separator
LANGUAGES = ("english", "spanish")
SPLITS = ("train", "val", "test")


def book_streams(*, language: str = "english", val_fraction: float = 0.1,
                 test_fraction: float = 0.1, seed: int = 0
                 ) -> dict[str, dict[str, bytes]]:
    """split -> book -> the UTF-8 bytes of that book's chapters dealt to the split.

    Each book's chapters are permuted with ``seed``; the first ``round(test_fraction * n)``
    (at least one when the book has three or more chapters) go to test, the next ones to
    validation, the rest to training. Books of one or two chapters go to training only.
    """
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < val_fraction, test_fraction and a sum below 1, got "
                         f"{val_fraction}, {test_fraction}")
    column = 1 if language == "english" else 2
    chapters: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row in load_parallel_verses():
        book, place = row[0].rsplit(" ", 1)
        chapters[book][int(place.split(":")[0])].append(row[column])
    rng = np.random.default_rng(seed)
    streams: dict[str, dict[str, bytes]] = {split: {} for split in SPLITS}
    for book, by_number in chapters.items():
        numbers = sorted(by_number)
        order = [numbers[i] for i in rng.permutation(len(numbers))]
        n_test = max(1, round(test_fraction * len(numbers))) if len(numbers) >= 3 else 0
        n_val = max(1, round(val_fraction * len(numbers))) if len(numbers) >= 3 else 0
        dealt = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
                 "train": order[n_test + n_val:]}
        for split, chosen in dealt.items():
            if chosen:
                text = " ".join(" ".join(by_number[n]) for n in sorted(chosen))
                streams[split][book] = text.encode("utf-8")
    return streams


def _check_lengths(min_bytes: int, max_bytes: int) -> None:
    if not 1 <= min_bytes <= max_bytes:
        raise ValueError(f"need 1 <= min_bytes <= max_bytes, got {min_bytes}, {max_bytes}")


def _sizes(num_train: int, num_val: int, num_test: int, max_examples: int | None) -> list[int]:
    sizes = [num_train, num_val, num_test]
    return sizes if max_examples is None else [min(s, max_examples) for s in sizes]


def _window(rng: np.random.Generator, stream: bytes, length: int) -> tuple[int, list[int]]:
    """(start, byte tokens) of a random ``length``-byte window of ``stream``."""
    start = int(rng.integers(0, len(stream) - length + 1))
    return start, _tokens(stream, start, length)


def _tokens(stream: bytes, start: int, length: int) -> list[int]:
    return [b + 1 for b in stream[start:start + length]]


def _disjoint_windows(rng: np.random.Generator, stream: bytes, len_a: int, len_b: int
                      ) -> tuple[int, int]:
    """Starts of windows a and b that do not overlap; a comes first in the stream or b does."""
    a_first = bool(rng.random() < 0.5)
    len_1, len_2 = (len_a, len_b) if a_first else (len_b, len_a)
    start_1 = int(rng.integers(0, len(stream) - len_1 - len_2 + 1))
    start_2 = int(rng.integers(start_1 + len_1, len(stream) - len_2 + 1))
    return (start_1, start_2) if a_first else (start_2, start_1)


#: A drawn example: byte tokens, label, and the key that must not repeat (where it was cut from).
_Drawn = tuple[list[int], int, tuple[int, ...]]


def _draw_splits(sample: Callable[[np.random.Generator, str], _Drawn], sizes: Sequence[int],
                 seed: int, task: str) -> list[list[tuple[list[int], int]]]:
    """(tokens, label) lists per split, each drawn from that split's text, keys distinct."""
    splits = []
    for index, (split, size) in enumerate(zip(SPLITS, sizes, strict=True)):
        def draw(rng: np.random.Generator, split: str = split) -> _Drawn:
            return sample(rng, split)

        drawn = draw_distinct(draw, lambda ex: ex[2], [size], seed + index, task=task)[0]
        splits.append([(tokens, label) for tokens, label, _ in drawn])
    return splits


def _byte_task(name: str, splits: Sequence[Sequence[tuple[list[int], int]]], num_classes: int,
               max_length: int, source: str, extra: dict[str, object]) -> Task:
    train, val, test = to_datasets(splits)

    def decode(ids: list[int]) -> str:
        raw = bytes(int(i) - 1 for i in ids if 1 <= int(i) <= 256)
        return raw.decode("utf-8", errors="replace")

    return Task(name=name, kind="classification", modality="tokens", train=train, val=val,
                test=test, num_classes=num_classes, vocab_size=BYTE_VOCAB_SIZE,
                input_shape=(0,), pad_id=0, decode=decode, source=source,
                extra={**extra, "max_length": max_length, "max_input_length": max_length})


def _source(language: str) -> str:
    module = "World English Bible" if language == "english" else "Reina-Valera 1909"
    return (f"{module}, SWORD module via pysword (Debian sword-text-web / sword-text-sparv), "
            f"public domain; byte-level passages")


@register_task("bible-books", "which Bible book is a 1-4K-byte passage from (byte-level, LRA "
                              "text style), 10 classes")
def load_bible_books(*, num_train: int = 8000, num_val: int = 500, num_test: int = 1000,
                     num_books: int = 10, min_bytes: int = 1000, max_bytes: int = 4000,
                     language: str = "english", seed: int = 0,
                     max_examples: int | None = None) -> Task:
    """Passages of the ``num_books`` longest books, one class per book, classes balanced.

    Args:
        num_train, num_val, num_test: passages per split (distinct within the task).
        num_books: classes: the books with the most training text.
        min_bytes, max_bytes: passage length range (uniform), in bytes = tokens.
        language: "english" (World English Bible) or "spanish" (Reina-Valera 1909).
        seed: seed of the chapter split and the windows.
        max_examples: cap every split at this many passages.
    """
    _check_lengths(min_bytes, max_bytes)
    streams = book_streams(language=language, seed=seed)
    eligible = [b for b in streams["train"]
                if all(len(streams[s].get(b, b"")) >= max_bytes for s in SPLITS)]
    books = sorted(eligible, key=lambda b: -len(streams["train"][b]))[:num_books]
    if num_books < 2 or len(books) < num_books:
        raise ValueError(f"num_books must lie in 2..{len(books)} for passages of up to "
                         f"{max_bytes} bytes, got {num_books}")
    def sample(rng: np.random.Generator, split: str) -> _Drawn:
        label = int(rng.integers(num_books))
        length = int(rng.integers(min_bytes, max_bytes + 1))
        start, tokens = _window(rng, streams[split][books[label]], length)
        return tokens, label, (label, start, length)

    splits = _draw_splits(sample, _sizes(num_train, num_val, num_test, max_examples), seed,
                          "bible-books")
    return _byte_task("bible-books", splits, num_books, max_bytes, _source(language),
                      {"class_names": tuple(books), "language": language})


@register_task("bible-retrieval", "do two byte-level Bible passages come from the same book "
                                  "(LRA retrieval style), 2 classes")
def load_bible_retrieval(*, num_train: int = 8000, num_val: int = 500, num_test: int = 1000,
                         min_bytes: int = 500, max_bytes: int = 2000, language: str = "english",
                         seed: int = 0, max_examples: int | None = None) -> Task:
    """Pairs ``passage_a SEPARATOR passage_b``, label 1 when both are from the same book.

    Args:
        num_train, num_val, num_test: pairs per split (half of each label, in expectation).
        min_bytes, max_bytes: length range of each passage (a pair is up to
            ``2 * max_bytes + 1`` tokens).
        language: "english" or "spanish".
        seed: seed of the chapter split and the pairs.
        max_examples: cap every split at this many pairs.
    """
    _check_lengths(min_bytes, max_bytes)
    streams = book_streams(language=language, seed=seed)
    # a same-book pair needs two disjoint windows, in every split
    books = sorted(b for b in streams["train"]
                   if all(len(streams[s].get(b, b"")) >= 2 * max_bytes + 1 for s in SPLITS))
    if len(books) < 2:
        raise ValueError(f"only {len(books)} books hold two passages of {max_bytes} bytes in "
                         f"every split; lower max_bytes")
    def sample(rng: np.random.Generator, split: str) -> _Drawn:
        same = int(rng.integers(2))
        first = int(rng.integers(len(books)))
        second = first if same else (first + 1 + int(rng.integers(len(books) - 1))) % len(books)
        len_a, len_b = (int(rng.integers(min_bytes, max_bytes + 1)) for _ in range(2))
        stream_a, stream_b = streams[split][books[first]], streams[split][books[second]]
        if same:
            start_a, start_b = _disjoint_windows(rng, stream_a, len_a, len_b)
        else:
            start_a = int(rng.integers(0, len(stream_a) - len_a + 1))
            start_b = int(rng.integers(0, len(stream_b) - len_b + 1))
        tokens = [*_tokens(stream_a, start_a, len_a), SEPARATOR,
                  *_tokens(stream_b, start_b, len_b)]
        return tokens, same, (first, start_a, len_a, second, start_b, len_b)

    splits = _draw_splits(sample, _sizes(num_train, num_val, num_test, max_examples), seed,
                          "bible-retrieval")
    return _byte_task("bible-retrieval", splits, 2, 2 * max_bytes + 1, _source(language),
                      {"books": tuple(books), "language": language, "separator_id": SEPARATOR})
