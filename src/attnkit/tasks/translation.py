"""English → Spanish translation on verse-aligned Bibles (World English Bible → Reina-Valera 1909).

Data: :func:`attnkit.tasks.bible.load_parallel_verses` (Debian ``sword-text-web`` and
``sword-text-sparv``, read with PyPI ``pysword``, parsed once and cached). Verses are split
train/val/test by a permutation with a fixed seed. Each side gets a byte-level BPE tokenizer
(:mod:`attnkit.tasks.subword`) trained on the training verses only and cached beside the corpus;
byte-level BPE encodes any text, so no verse needs an unknown token. Pairs longer than
``max_length`` subword tokens on either side are dropped from every split.

Inputs x: (Ls,) int64 English ids; targets y: (Lt,) int64 Spanish ids ``[bos, ..., eos]``.
``Task.evaluate`` decodes greedily (and with beam search when ``beam_size > 1``) and scores corpus
BLEU and chrF with sacrebleu against the ORIGINAL Spanish verse text, never against text rebuilt
from ids.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from attnkit.tasks.base import Task, register_task
from attnkit.tasks.bible import DEFAULT_SWORD_DIR, load_parallel_verses
from attnkit.tasks.sources import cache_dir as default_cache_dir
from attnkit.tasks.sources import import_package
from attnkit.tasks.splits import SequencePairDataset, limit, pad_sequences, split_indices
from attnkit.tasks.subword import SubwordTokenizer, train_subword_tokenizer

__all__ = ["TextPairDataset", "TranslationScores", "corpus_bleu", "load_translation",
           "make_bleu_evaluator", "score_translations"]


def _sacrebleu() -> Any:
    return import_package("sacrebleu", needed_for="BLEU")


class TranslationScores(dict[str, float]):
    """``{"bleu": ..., "chrf": ...}`` plus sacrebleu's signatures (how to reproduce the scores)."""

    signatures: dict[str, str]


def score_translations(hypotheses: Sequence[str], references: Sequence[str], *,
                       lowercase: bool = False) -> TranslationScores:
    """Corpus BLEU and chrF (0-100, sacrebleu defaults: 13a tokenization) of detokenized
    hypotheses against one original reference text each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    sacrebleu = _sacrebleu()
    bleu = sacrebleu.metrics.BLEU(lowercase=lowercase)
    chrf = sacrebleu.metrics.CHRF(lowercase=lowercase)
    refs = [list(references)]
    scores = TranslationScores(bleu=float(bleu.corpus_score(list(hypotheses), refs).score),
                               chrf=float(chrf.corpus_score(list(hypotheses), refs).score))
    scores.signatures = {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}
    return scores


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) of detokenized hypotheses against one reference each (sacrebleu)."""
    return score_translations(hypotheses, references)["bleu"]


class TextPairDataset(SequencePairDataset):
    """Token-id pairs that remember the original target text each pair was made from."""

    def __init__(self, inputs: Sequence[Tensor], targets: Sequence[Tensor],
                 target_texts: Sequence[str]) -> None:
        super().__init__(inputs, targets)
        if len(target_texts) != len(self.inputs):
            raise ValueError(f"{len(target_texts)} target texts for {len(self.inputs)} pairs")
        self.target_texts = list(target_texts)


def _reference_texts(dataset: Any, count: int) -> list[str]:
    """The original target texts of the first ``count`` items (through any ``Subset`` views)."""
    indices = list(range(count))
    while isinstance(dataset, Subset):
        indices = [int(dataset.indices[i]) for i in indices]
        dataset = dataset.dataset
    texts = getattr(dataset, "target_texts", None)
    if texts is None:
        raise ValueError(f"BLEU is scored against original reference text, which "
                         f"{type(dataset).__name__} does not keep; use the task's splits "
                         f"(TextPairDataset)")
    return [texts[i] for i in indices]


def make_bleu_evaluator(decode: Callable[[list[int]], str], *, bos_id: int, eos_id: int,
                        max_length: int, max_examples: int = 1000, batch_size: int = 64,
                        beam_size: int = 1, length_penalty: float = 1.0,
                        lowercase: bool = False) -> Callable[..., dict[str, float]]:
    """A ``Task.evaluate`` hook: decode up to ``max_examples`` and score BLEU and chrF.

    Returns ``bleu`` and ``chrf`` for greedy decoding and, when ``beam_size > 1``, also
    ``bleu_beam`` and ``chrf_beam``. References are the dataset's original target texts
    (``TextPairDataset.target_texts``). sacrebleu's signature is printed on the first call.
    The model must offer ``greedy_decode(source, *, bos_id, eos_id, max_length, lengths)``
    (and ``beam_decode`` with ``beam_size`` and ``length_penalty`` for beam search) returning
    (B, T) ids that start with ``bos_id``; attnkit's Seq2SeqTransformer does.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    signature_shown = False

    def run(model: nn.Module, dataset: Any, device: torch.device, count: int,
            beam: int) -> list[str]:
        name = "greedy_decode" if beam == 1 else "beam_decode"
        generate = getattr(model, name, None)
        if generate is None:
            raise ValueError(f"BLEU needs a model with {name}(); {type(model).__name__} has none")
        options = {} if beam == 1 else {"beam_size": beam, "length_penalty": length_penalty}
        hypotheses = []
        for start in range(0, count, batch_size):
            pairs = [dataset[i] for i in range(start, min(start + batch_size, count))]
            source, lengths = pad_sequences([x for x, _ in pairs], pad_value=0)
            out = generate(source.to(device), bos_id=bos_id, eos_id=eos_id,
                           max_length=max_length, lengths=lengths.to(device), **options)
            hypotheses += [decode(row.tolist()) for row in out.cpu()]
        return hypotheses

    def evaluate(model: nn.Module, dataset: Any, device: torch.device) -> dict[str, float]:
        nonlocal signature_shown
        count = min(len(dataset), max_examples)
        references = _reference_texts(dataset, count)
        greedy = score_translations(run(model, dataset, device, count, 1), references,
                                    lowercase=lowercase)
        metrics = {"bleu": greedy["bleu"], "chrf": greedy["chrf"]}
        if beam_size > 1:
            beam = score_translations(run(model, dataset, device, count, beam_size), references,
                                      lowercase=lowercase)
            metrics.update(bleu_beam=beam["bleu"], chrf_beam=beam["chrf"])
        if not signature_shown:
            signature_shown = True
            print(f"sacrebleu BLEU {greedy.signatures['bleu']}, chrF "
                  f"{greedy.signatures['chrf']}", file=sys.stderr)
        return metrics

    return evaluate


@register_task("translation", "English->Spanish Bible verses (WEB -> RV1909), BLEU (Debian SWORD)")
def load_translation(*, seed: int = 0, val_size: int = 1000, test_size: int = 1000,
                     max_length: int = 96, source_vocab_size: int = 8000,
                     target_vocab_size: int = 8000, lowercase: bool = False,
                     max_examples: int | None = None, bleu_examples: int = 1000,
                     beam_size: int = 4, length_penalty: float = 1.0,
                     sword_dir: str | Path = DEFAULT_SWORD_DIR,
                     cache_dir: str | Path | None = None) -> Task:
    """Load the verse pairs as a sequence-to-sequence task.

    Args:
        seed: seed of the verse permutation that makes the splits (and of subsampling).
        val_size, test_size: verse pairs held out for validation and test.
        max_length: drop pairs with more subword tokens than this on either side (before bos/eos).
        source_vocab_size, target_vocab_size: BPE vocabulary sizes (4 specials and 256 bytes
            included), each trained on the training verses of its side only.
        lowercase: lower-case both sides for the model; BLEU and chrF are then case-insensitive
            (sacrebleu's ``lowercase``), still against the original references.
        max_examples: keep at most this many pairs per split (seeded subsample).
        bleu_examples: ``Task.evaluate`` decodes only the first this many pairs of a split.
        beam_size: beam width of the second decoding ``Task.evaluate`` scores (1: greedy only).
        length_penalty: beam hypotheses are ranked by log p / length ** length_penalty.
        sword_dir: the SWORD library holding both modules.
        cache_dir: where the parsed verses and trained tokenizers are cached
            (default ~/.cache/attnkit).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    verses = load_parallel_verses(sword_dir=sword_dir, cache=cache_dir)
    if val_size < 1 or test_size < 1 or val_size + test_size >= len(verses):
        raise ValueError(f"val_size={val_size} and test_size={test_size} must be >= 1 and leave "
                         f"training pairs out of {len(verses)}")

    def prepare(text: str) -> str:
        return text.lower() if lowercase else text

    # Split the verses first so that the tokenizers see training text only.
    n_train = len(verses) - val_size - test_size
    split_idx = split_indices(len(verses), [n_train, val_size, test_size], seed)
    train_idx = [int(i) for i in split_idx[0]]
    tokenizer_dir = default_cache_dir(cache_dir) / "translation"
    source_tok = train_subword_tokenizer([prepare(verses[i][1]) for i in train_idx],
                                         vocab_size=source_vocab_size, cache_dir=tokenizer_dir,
                                         name="web-en")
    target_tok = train_subword_tokenizer([prepare(verses[i][2]) for i in train_idx],
                                         vocab_size=target_vocab_size, cache_dir=tokenizer_dir,
                                         name="rv1909-es")
    bos, eos = SubwordTokenizer.bos_id, SubwordTokenizer.eos_id
    source_ids = source_tok.encode_batch([prepare(en) for _, en, _ in verses])
    target_ids = target_tok.encode_batch([prepare(es) for _, _, es in verses])
    kept = [0 < len(source_ids[i]) <= max_length and 0 < len(target_ids[i]) <= max_length
            for i in range(len(verses))]

    def build(indices: Any, offset: int) -> tuple[TextPairDataset, list[str]]:
        indices = limit(indices[[kept[int(i)] for i in indices]], max_examples, seed + offset)
        xs = [torch.tensor(source_ids[i], dtype=torch.long) for i in indices]
        ys = [torch.tensor([bos, *target_ids[i], eos], dtype=torch.long) for i in indices]
        return (TextPairDataset(xs, ys, [verses[i][2] for i in indices]),
                [verses[i][0] for i in indices])

    (train, train_refs), (val, val_refs), (test, test_refs) = (
        build(idx, offset) for offset, idx in enumerate(split_idx, start=1))

    def encode(text: str) -> list[int]:
        return source_tok.encode(prepare(text))

    return Task(
        name="translation", kind="seq2seq", modality="text",
        train=train, val=val, test=test,
        vocab_size=source_tok.size, target_vocab_size=target_tok.size,
        input_shape=(0,), metric="loss", pad_id=SubwordTokenizer.pad_id, bos_id=bos, eos_id=eos,
        encode=encode, decode=target_tok.decode,
        evaluate=make_bleu_evaluator(target_tok.decode, bos_id=bos, eos_id=eos,
                                     max_length=max_length + 2, max_examples=bleu_examples,
                                     beam_size=beam_size, length_penalty=length_penalty,
                                     lowercase=lowercase),
        source="World English Bible (engWEB2015eb, Debian sword-text-web) and Reina-Valera 1909 "
               "(spaRV1909eb, Debian sword-text-sparv), both public domain, read with pysword; "
               "verse-aligned",
        extra={"source_tokenizer": source_tok, "target_tokenizer": target_tok,
               "source_decode": source_tok.decode, "source_tokens": source_tok.tokens,
               "references": {"train": train_refs, "val": val_refs, "test": test_refs},
               "pairs_kept": sum(kept), "verses": len(verses),
               "max_input_length": max_length, "max_target_length": max_length + 2},
    )
