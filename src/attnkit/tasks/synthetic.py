"""Synthetic sequence tasks, generated from a seed: copy, reverse, sort, addition, recall.

Sequence-to-sequence tasks (copy, reverse, sort, addition) share one token layout: id 0 pad,
1 begin (bos), 2 end (eos), then the task's symbols from id 4 (id 3 is reserved as a separator).
Inputs x: (Ls,) int64 symbol ids; targets y: (Lt,) int64 ``[bos, ..., eos]``.

* ``copy``     y is x.
* ``reverse``  y is x reversed.
* ``sort``     y is x in ascending order (ties kept).
* ``addition`` x is ``a + b`` written with decimal digits, y their sum (e.g. ``12+345`` → ``357``).
* ``recall``   associative recall (classification): x lists ``n`` distinct key/value pairs, then a
  separator and one of the keys; the label is the value paired with that key (Ba et al. 2016,
  "Using fast weights to attend to the recent past"; Arora et al. 2023, Zoology, generalize it).

Inputs never repeat within or across splits (see :mod:`attnkit.tasks.generated`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from attnkit.tasks.base import Task, register_task
from attnkit.tasks.generated import draw_distinct, to_datasets

__all__ = ["BOS_ID", "EOS_ID", "FIRST_SYMBOL", "PAD_ID", "SEP_ID", "load_addition", "load_copy",
           "load_recall", "load_reverse", "load_sort"]

PAD_ID, BOS_ID, EOS_ID, SEP_ID = 0, 1, 2, 3
FIRST_SYMBOL = 4  # id of symbol 0 in the sequence-to-sequence tasks
PLUS_ID = FIRST_SYMBOL + 10  # addition: after the ten digits
SEP_RECALL = 1  # recall's separator id (its layout has no bos/eos)

Pair = tuple[list[int], list[int]]


def _check_lengths(min_length: int, max_length: int, num_symbols: int) -> None:
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    if num_symbols < 2:
        raise ValueError(f"num_symbols must be >= 2, got {num_symbols}")


def _split_sizes(num_train: int, num_val: int, num_test: int,
                 max_examples: int | None) -> list[int]:
    sizes = [num_train, num_val, num_test]
    return sizes if max_examples is None else [min(s, max_examples) for s in sizes]


def _symbol_codec(num_symbols: int) -> tuple[Callable[[str], list[int]],
                                             Callable[[list[int]], str]]:
    """Symbols written as space-separated numbers: ``"3 0 7"`` <-> ids ``[7, 4, 11]``."""

    def encode(text: str) -> list[int]:
        ids = []
        for token in text.split():
            value = int(token)
            if not 0 <= value < num_symbols:
                raise ValueError(f"symbol {value} outside 0..{num_symbols - 1}")
            ids.append(value + FIRST_SYMBOL)
        return ids

    def decode(ids: list[int]) -> str:
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i >= FIRST_SYMBOL:
                out.append(str(i - FIRST_SYMBOL))
        return " ".join(out)

    return encode, decode


def _seq2seq_symbols(name: str, transform: Callable[[list[int]], list[int]], *, num_train: int,
                     num_val: int, num_test: int, min_length: int, max_length: int,
                     num_symbols: int, seed: int, max_examples: int | None) -> Task:
    """A seq2seq task whose target is ``transform(source)`` over random symbol strings."""
    _check_lengths(min_length, max_length, num_symbols)

    def sample(rng: np.random.Generator) -> Pair:
        length = int(rng.integers(min_length, max_length + 1))
        x = (rng.integers(0, num_symbols, size=length) + FIRST_SYMBOL).tolist()
        return x, [BOS_ID, *transform(x), EOS_ID]

    splits = draw_distinct(sample, lambda p: tuple(p[0]),
                           _split_sizes(num_train, num_val, num_test, max_examples), seed,
                           task=name)
    train, val, test = to_datasets(splits)
    encode, decode = _symbol_codec(num_symbols)
    vocab = FIRST_SYMBOL + num_symbols
    return Task(name=name, kind="seq2seq", modality="tokens", train=train, val=val, test=test,
                vocab_size=vocab, target_vocab_size=vocab, input_shape=(0,),
                metric="token_accuracy", pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                encode=encode, decode=decode,
                source=f"generated (synthetic {name}, seed {seed})",
                extra={"num_symbols": num_symbols, "min_length": min_length,
                       "max_length": max_length, "max_input_length": max_length,
                       "max_target_length": max_length + 2})


@register_task("copy", "synthetic: copy a random symbol string (seq2seq)")
def load_copy(*, num_train: int = 10000, num_val: int = 1000, num_test: int = 1000,
              min_length: int = 4, max_length: int = 16, num_symbols: int = 10, seed: int = 0,
              max_examples: int | None = None) -> Task:
    """Copy task: inputs of ``min_length..max_length`` symbols drawn from ``num_symbols``."""
    return _seq2seq_symbols("copy", list, num_train=num_train, num_val=num_val,
                            num_test=num_test, min_length=min_length, max_length=max_length,
                            num_symbols=num_symbols, seed=seed, max_examples=max_examples)


@register_task("reverse", "synthetic: reverse a random symbol string (seq2seq)")
def load_reverse(*, num_train: int = 10000, num_val: int = 1000, num_test: int = 1000,
                 min_length: int = 4, max_length: int = 16, num_symbols: int = 10,
                 seed: int = 0, max_examples: int | None = None) -> Task:
    """Reverse task: the target is the input read backwards."""
    return _seq2seq_symbols("reverse", lambda x: x[::-1], num_train=num_train, num_val=num_val,
                            num_test=num_test, min_length=min_length, max_length=max_length,
                            num_symbols=num_symbols, seed=seed, max_examples=max_examples)


@register_task("sort", "synthetic: sort a random symbol string (seq2seq)")
def load_sort(*, num_train: int = 10000, num_val: int = 1000, num_test: int = 1000,
              min_length: int = 4, max_length: int = 16, num_symbols: int = 10, seed: int = 0,
              max_examples: int | None = None) -> Task:
    """Sort task: the target holds the input's symbols in ascending order."""
    return _seq2seq_symbols("sort", sorted, num_train=num_train, num_val=num_val,
                            num_test=num_test, min_length=min_length, max_length=max_length,
                            num_symbols=num_symbols, seed=seed, max_examples=max_examples)


def _digits(value: int) -> list[int]:
    return [FIRST_SYMBOL + int(d) for d in str(value)]


def _addition_codec() -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    """``"12+345"`` <-> digit and plus ids."""

    def encode(text: str) -> list[int]:
        ids = []
        for char in text.replace(" ", ""):
            if char == "+":
                ids.append(PLUS_ID)
            elif char.isdigit():
                ids.append(FIRST_SYMBOL + int(char))
            else:
                raise ValueError(f"addition inputs hold digits and '+', got {char!r}")
        return ids

    def decode(ids: list[int]) -> str:
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i == PLUS_ID:
                out.append("+")
            elif FIRST_SYMBOL <= i < PLUS_ID:
                out.append(str(i - FIRST_SYMBOL))
        return "".join(out)

    return encode, decode


@register_task("addition", "synthetic: multi-digit addition a+b -> sum (seq2seq)")
def load_addition(*, num_train: int = 10000, num_val: int = 1000, num_test: int = 1000,
                  min_digits: int = 1, max_digits: int = 5, seed: int = 0,
                  max_examples: int | None = None) -> Task:
    """Addition of two numbers of ``min_digits..max_digits`` decimal digits each (drawn apart).

    Inputs ``digits(a) + [plus] + digits(b)``; targets ``[bos] + digits(a + b) + [eos]``, most
    significant digit first.
    """
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")

    def number(rng: np.random.Generator) -> int:
        digits = int(rng.integers(min_digits, max_digits + 1))
        low = 0 if digits == 1 else 10 ** (digits - 1)
        return int(rng.integers(low, 10 ** digits))

    def sample(rng: np.random.Generator) -> Pair:
        a, b = number(rng), number(rng)
        return [*_digits(a), PLUS_ID, *_digits(b)], [BOS_ID, *_digits(a + b), EOS_ID]

    splits = draw_distinct(sample, lambda p: tuple(p[0]),
                           _split_sizes(num_train, num_val, num_test, max_examples), seed,
                           task="addition")
    train, val, test = to_datasets(splits)
    encode, decode = _addition_codec()
    vocab = PLUS_ID + 1
    return Task(name="addition", kind="seq2seq", modality="tokens", train=train, val=val,
                test=test, vocab_size=vocab, target_vocab_size=vocab, input_shape=(0,),
                metric="token_accuracy", pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                encode=encode, decode=decode,
                source=f"generated (synthetic addition, seed {seed})",
                extra={"min_digits": min_digits, "max_digits": max_digits, "plus_id": PLUS_ID,
                       "max_input_length": 2 * max_digits + 1,
                       "max_target_length": max_digits + 3})


def recall_layout(num_keys: int) -> tuple[int, int]:
    """Recall ids: pad 0, separator 1, keys from 2, then values -> (first key, first value)."""
    return 2, 2 + num_keys


@register_task("recall", "synthetic: associative recall of the value paired with a key (classes)")
def load_recall(*, num_train: int = 10000, num_val: int = 1000, num_test: int = 1000,
                num_pairs: int = 8, num_keys: int = 16, num_values: int = 16, seed: int = 0,
                max_examples: int | None = None) -> Task:
    """Associative recall: ``k1 v1 ... kn vn SEP q`` -> the value index paired with key ``q``.

    Keys within one example are distinct; values may repeat. Inputs have 2 * num_pairs + 2 ids.
    """
    if not 1 <= num_pairs <= num_keys:
        raise ValueError(f"need 1 <= num_pairs <= num_keys (keys are distinct), got "
                         f"num_pairs={num_pairs}, num_keys={num_keys}")
    if num_values < 2:
        raise ValueError(f"num_values must be >= 2, got {num_values}")
    first_key, first_value = recall_layout(num_keys)

    def sample(rng: np.random.Generator) -> tuple[list[int], int]:
        keys = rng.choice(num_keys, size=num_pairs, replace=False)
        values = rng.integers(0, num_values, size=num_pairs)
        asked = int(rng.integers(0, num_pairs))
        x: list[int] = []
        for k, v in zip(keys, values, strict=True):
            x += [first_key + int(k), first_value + int(v)]
        x += [SEP_RECALL, first_key + int(keys[asked])]
        return x, int(values[asked])

    splits = draw_distinct(sample, lambda p: tuple(p[0]),
                           _split_sizes(num_train, num_val, num_test, max_examples), seed,
                           task="recall")
    train, val, test = to_datasets(splits)

    def decode(ids: Sequence[int]) -> str:
        names = []
        for i in ids:
            if i == SEP_RECALL:
                names.append("?")
            elif first_key <= i < first_value:
                names.append(f"k{i - first_key}")
            elif first_value <= i < first_value + num_values:
                names.append(f"v{i - first_value}")
        return " ".join(names)

    def encode(text: str) -> list[int]:
        ids = []
        for token in text.split():
            if token == "?":
                ids.append(SEP_RECALL)
            elif token[0] == "k" and 0 <= int(token[1:]) < num_keys:
                ids.append(first_key + int(token[1:]))
            elif token[0] == "v" and 0 <= int(token[1:]) < num_values:
                ids.append(first_value + int(token[1:]))
            else:
                raise ValueError(f"recall tokens are k0..k{num_keys - 1}, v0..v{num_values - 1} "
                                 f"and '?', got {token!r}")
        return ids

    return Task(name="recall", kind="classification", modality="tokens", train=train, val=val,
                test=test, num_classes=num_values, vocab_size=first_value + num_values,
                input_shape=(2 * num_pairs + 2,), pad_id=PAD_ID, encode=encode, decode=decode,
                source=f"generated (synthetic associative recall, seed {seed})",
                extra={"num_pairs": num_pairs, "num_keys": num_keys, "num_values": num_values,
                       "max_input_length": 2 * num_pairs + 2,
                       "first_key": first_key, "first_value": first_value,
                       "separator_id": SEP_RECALL,
                       # noise.perturbation_for leaves the separator in place
                       "protected_ids": (SEP_RECALL,)})
