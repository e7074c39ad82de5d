"""The LRA-style tasks: pixel tokens, Pathfinder generator, byte-level Bible passages.

Data-backed tests skip, with the install command as the reason, when the data is absent.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from attnkit.tasks import Task, get_task
from attnkit.tasks.bible_documents import SEPARATOR, book_streams
from attnkit.tasks.listops import LRA_SETTINGS, load_listops
from attnkit.tasks.pathfinder import PathfinderStyle, draw_path, pathfinder_image
from attnkit.tasks.pixel_sequences import image_to_pixel_tokens


def need_bibles() -> None:
    if importlib.util.find_spec("pysword") is None:
        pytest.skip("needs the Python package pysword: pip install 'attnkit[data]'")
    for module in ("engWEB2015eb", "spaRV1909eb"):
        if not Path(f"/usr/share/sword/modules/texts/ztext/{module}").is_dir():
            pytest.skip("needs the SWORD Bibles: apt-get install -y sword-text-web "
                        "sword-text-sparv")


# ---------------------------------------------------------------- pixel tokens

def test_pixel_tokens_of_uint8_and_float_images_agree() -> None:
    images = torch.randint(0, 256, (3, 1, 5, 4), dtype=torch.uint8)
    tokens = image_to_pixel_tokens(images)
    assert tokens.shape == (3, 20) and tokens.dtype == torch.long
    assert torch.equal(tokens, images.reshape(3, -1).long() + 1)  # row-major, 0 is padding
    assert torch.equal(image_to_pixel_tokens(images.float() / 255), tokens)


def test_pixel_tokens_refuse_unscaled_floats() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\].*x / 255"):
        image_to_pixel_tokens(torch.full((1, 2, 2), 3.0))


def test_fashion_mnist_pixels_is_a_784_token_sequence() -> None:
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("needs /usr/share/datasets/fashion-mnist: apt-get install -y "
                    "dataset-fashion-mnist")
    task = get_task("fashion-mnist-pixels", max_examples=20)
    images = get_task("fashion-mnist", max_examples=20)
    x, y = task.test[3]
    assert x.shape == (784,) and task.vocab_size == 257 and task.modality == "tokens"
    assert torch.equal(x, image_to_pixel_tokens(images.test[3][0][None])[0])
    assert int(y) == int(images.test[3][1])
    pooled = get_task("fashion-mnist-pixels", max_examples=5, pool=4)
    assert pooled.test[0][0].shape == (49,) and pooled.input_shape == (49,)
    with pytest.raises(ValueError, match="pool must divide 28"):
        get_task("fashion-mnist-pixels", pool=5)


# ---------------------------------------------------------------- ListOps at LRA settings

def test_listops_lra_settings_give_lra_lengths() -> None:
    task = load_listops(num_train=6, num_val=2, num_test=2, **LRA_SETTINGS)
    lengths = [len(task.train[i][0]) for i in range(6)]
    assert all(500 <= n <= 2000 for n in lengths)
    assert task.extra["max_depth"] == 10 and task.extra["max_args"] == 10


# ---------------------------------------------------------------- Pathfinder

def test_paths_take_unit_steps_inside_the_image() -> None:
    style = PathfinderStyle(size=16, path_steps=40, curvature=0.8)
    for seed in range(5):
        points = draw_path(np.random.default_rng(seed), style)
        assert points.shape == (41, 2)
        assert points.min() >= 1.0 + style.dot_radius - 1e-9
        assert points.max() <= style.size - 2 - style.dot_radius + 1e-9
        steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
        assert steps.max() <= 1.0 + 1e-9  # unit steps (shorter only where clipped at a border)


def test_pathfinder_images_are_seeded_and_labels_not_given_away_by_ink() -> None:
    style = PathfinderStyle()
    a = pathfinder_image(np.random.default_rng(3), True, style)
    b = pathfinder_image(np.random.default_rng(3), True, style)
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == (32, 32)
    assert set(np.unique(a)) <= {0, 255} and (a > 0).sum() > 20
    # Same random draws, only the label differs: the paths are identical, the second dot moves
    # from the end of path 0 to the end of path 1.
    pos = pathfinder_image(np.random.default_rng(7), True, style)
    neg = pathfinder_image(np.random.default_rng(7), False, style)
    assert not np.array_equal(pos, neg)
    rng = np.random.default_rng(0)
    ink = {label: np.mean([(pathfinder_image(rng, label, style) > 0).sum() for _ in range(200)])
           for label in (True, False)}
    assert abs(ink[True] - ink[False]) / ink[False] < 0.1


def test_pathfinder_task_is_balanced_pixel_tokens() -> None:
    task = get_task("pathfinder", num_train=200, num_val=10, num_test=10, size=16,
                    path_steps=12)
    x, _ = task.train[0]
    assert x.shape == (256,) and task.num_classes == 2 and int(x.min()) >= 1
    labels = torch.stack([task.train[i][1] for i in range(200)])
    assert 70 < int(labels.sum()) < 130
    with pytest.raises(ValueError, match="size must be >= 8"):
        get_task("pathfinder", size=4)


# ---------------------------------------------------------------- Bible passages

@pytest.fixture(scope="module")
def books() -> Task:
    need_bibles()
    return get_task("bible-books", num_train=60, num_val=10, num_test=30)


def test_bible_book_passages_are_bytes_of_their_book_unseen_in_training(books: Task) -> None:
    streams = book_streams()
    names = books.extra["class_names"]
    assert len(names) == 10 and books.num_classes == 10
    for i in range(30):
        x, y = books.test[i]
        assert 1000 <= len(x) <= 4000
        raw = bytes(int(t) - 1 for t in x)
        assert raw in streams["test"][names[int(y)]]  # from the labelled book's test chapters
        assert raw not in streams["train"][names[int(y)]]  # chapters are split, not passages
    assert books.decode is not None and books.decode(books.test[0][0].tolist())


def test_bible_retrieval_pairs_are_disjoint_windows(books: Task) -> None:
    task = get_task("bible-retrieval", num_train=80, num_val=10, num_test=10)
    streams = book_streams()
    labels = []
    for i in range(80):
        x, y = task.train[i]
        ids = x.tolist()
        assert ids.count(SEPARATOR) == 1
        cut = ids.index(SEPARATOR)
        a, b = (bytes(t - 1 for t in part) for part in (ids[:cut], ids[cut + 1:]))
        assert 500 <= len(a) <= 2000 and 500 <= len(b) <= 2000
        home_a = [k for k, s in streams["train"].items() if a in s]
        home_b = [k for k, s in streams["train"].items() if b in s]
        assert (set(home_a) & set(home_b) != set()) == bool(y)
        if y:  # the same book, but never overlapping text
            stream = streams["train"][home_a[0]]
            start_a, start_b = stream.find(a), stream.find(b)
            assert start_a + len(a) <= start_b or start_b + len(b) <= start_a
        labels.append(int(y))
    assert 25 < sum(labels) < 55
