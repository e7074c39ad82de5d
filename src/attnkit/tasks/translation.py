"""English → Spanish translation on verse-aligned Bibles (World English Bible → Reina-Valera 1909).

Data: :func:`attnkit.tasks.bible.load_parallel_verses` (Debian ``sword-text-web`` and
``sword-text-sparv``, read with PyPI ``pysword``, parsed once and cached). Verses are split
train/val/test by a permutation with a fixed seed. Word-level vocabularies (words and single
punctuation marks, lower-cased by default) are built from the training verses only; pairs longer
than ``max_length`` tokens on either side are dropped from every split.

Inputs x: (Ls,) int64 English ids; targets y: (Lt,) int64 Spanish ids ``[bos, ..., eos]``.
``Task.evaluate`` greedy-decodes with the model and scores corpus BLEU with sacrebleu.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attnkit.tasks.base import MissingDataError, Task, register_task
from attnkit.tasks.bible import DEFAULT_SWORD_DIR, load_parallel_verses
from attnkit.tasks.sources import PIP_DATA_INSTALL
from attnkit.tasks.splits import SequencePairDataset, limit, pad_sequences, split_indices
from attnkit.tasks.tokenizers import WordVocab, word_tokens

__all__ = ["corpus_bleu", "load_translation", "make_bleu_evaluator"]


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) of detokenized hypotheses against one reference each (sacrebleu)."""
    try:
        import sacrebleu
    except ImportError as err:
        raise MissingDataError(f"BLEU needs the Python package sacrebleu; install it with: "
                               f"{PIP_DATA_INSTALL}") from err
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def make_bleu_evaluator(decode: Callable[[list[int]], str], *, bos_id: int, eos_id: int,
                        max_length: int, max_examples: int = 500, batch_size: int = 64,
                        ) -> Callable[..., dict[str, float]]:
    """A ``Task.evaluate`` hook: greedy-decode up to ``max_examples`` and score corpus BLEU.

    The model must offer ``greedy_decode(source, *, bos_id, eos_id, max_length, lengths)``
    returning (B, T) ids that start with ``bos_id`` (attnkit's Seq2SeqTransformer does).
    """

    def evaluate(model: nn.Module, dataset: Any, device: torch.device) -> dict[str, float]:
        generate = getattr(model, "greedy_decode", None)
        if generate is None:
            raise ValueError(f"BLEU needs a model with greedy_decode(); {type(model).__name__} "
                             "has none")
        count = min(len(dataset), max_examples)
        hypotheses, references = [], []
        for start in range(0, count, batch_size):
            pairs = [dataset[i] for i in range(start, min(start + batch_size, count))]
            source, lengths = pad_sequences([x for x, _ in pairs], pad_value=0)
            out = generate(source.to(device), bos_id=bos_id, eos_id=eos_id,
                           max_length=max_length, lengths=lengths.to(device))
            hypotheses += [decode(row.tolist()) for row in out.cpu()]
            references += [decode(y.tolist()) for _, y in pairs]
        return {"bleu": corpus_bleu(hypotheses, references)}

    return evaluate


@register_task("translation", "English->Spanish Bible verses (WEB -> RV1909), BLEU (Debian SWORD)")
def load_translation(*, seed: int = 0, val_size: int = 1000, test_size: int = 1000,
                     max_length: int = 64, source_vocab_size: int = 8000,
                     target_vocab_size: int = 8000, lowercase: bool = True,
                     max_examples: int | None = None, bleu_examples: int = 500,
                     sword_dir: str | Path = DEFAULT_SWORD_DIR,
                     cache_dir: str | Path | None = None) -> Task:
    """Load the verse pairs as a sequence-to-sequence task.

    Args:
        seed: seed of the verse permutation that makes the splits (and of subsampling).
        val_size, test_size: verse pairs held out for validation and test.
        max_length: drop pairs with more tokens than this on either side (before bos/eos).
        source_vocab_size, target_vocab_size: vocabulary sizes including the 4 special ids.
        lowercase: lower-case both sides before tokenizing (BLEU is then case-insensitive).
        max_examples: keep at most this many pairs per split (seeded subsample).
        bleu_examples: ``Task.evaluate`` decodes only the first this many pairs of a split.
        sword_dir: the SWORD library holding both modules.
        cache_dir: where the parsed verses are cached (default ~/.cache/attnkit).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    verses = load_parallel_verses(sword_dir=sword_dir, cache=cache_dir)

    def prepare(text: str) -> list[str]:
        return word_tokens(text.lower() if lowercase else text)

    pairs = [(ref, prepare(en), prepare(es)) for ref, en, es in verses]
    pairs = [p for p in pairs if 0 < len(p[1]) <= max_length and 0 < len(p[2]) <= max_length]
    if val_size < 1 or test_size < 1 or val_size + test_size >= len(pairs):
        raise ValueError(f"val_size={val_size} and test_size={test_size} must be >= 1 and leave "
                         f"training pairs out of {len(pairs)}")
    n_train = len(pairs) - val_size - test_size
    split_idx = split_indices(len(pairs), [n_train, val_size, test_size], seed)
    train_idx = split_idx[0]
    source_vocab = WordVocab.build((pairs[i][1] for i in train_idx), max_size=source_vocab_size)
    target_vocab = WordVocab.build((pairs[i][2] for i in train_idx), max_size=target_vocab_size)
    bos, eos = WordVocab.bos_id, WordVocab.eos_id

    def build(indices: np.ndarray, offset: int) -> tuple[SequencePairDataset, list[str]]:
        indices = limit(indices, max_examples, seed + offset)
        xs: list[Tensor] = []
        ys: list[Tensor] = []
        for i in indices:
            _, en, es = pairs[i]
            xs.append(torch.tensor(source_vocab.encode_tokens(en), dtype=torch.long))
            ys.append(torch.tensor([bos, *target_vocab.encode_tokens(es), eos], dtype=torch.long))
        return SequencePairDataset(xs, ys), [pairs[i][0] for i in indices]

    (train, train_refs), (val, val_refs), (test, test_refs) = (
        build(idx, offset) for offset, idx in enumerate(split_idx, start=1))

    def encode(text: str) -> list[int]:
        return source_vocab.encode_tokens(prepare(text))

    return Task(
        name="translation", kind="seq2seq", modality="text",
        train=train, val=val, test=test,
        vocab_size=source_vocab.size, target_vocab_size=target_vocab.size,
        input_shape=(0,), metric="loss", pad_id=WordVocab.pad_id, bos_id=bos, eos_id=eos,
        encode=encode, decode=target_vocab.decode,
        evaluate=make_bleu_evaluator(target_vocab.decode, bos_id=bos, eos_id=eos,
                                     max_length=max_length + 2, max_examples=bleu_examples),
        source="World English Bible (engWEB2015eb, Debian sword-text-web) and Reina-Valera 1909 "
               "(spaRV1909eb, Debian sword-text-sparv), both public domain, read with pysword; "
               "verse-aligned",
        extra={"source_vocab": source_vocab, "target_vocab": target_vocab,
               "source_decode": source_vocab.decode,
               "references": {"train": train_refs, "val": val_refs, "test": test_refs},
               "pairs_kept": len(pairs), "verses": len(verses),
               "max_input_length": max_length, "max_target_length": max_length + 2},
    )
