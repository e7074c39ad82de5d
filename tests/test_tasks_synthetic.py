"""Synthetic tasks: targets computed independently from the decoded inputs, splits, seeds."""

from __future__ import annotations

import pytest
import torch

from attnkit.tasks import Task, get_task

SMALL = {"num_train": 300, "num_val": 60, "num_test": 60}


def inputs_of(task: Task) -> list[set[tuple[int, ...]]]:
    return [{tuple(x.tolist()) for x, _ in split} for split in (task.train, task.val, task.test)]


def check_splits_disjoint(task: Task) -> None:
    train, val, test = inputs_of(task)
    assert len(train) == len(task.train) and len(val) == len(task.val)  # no repeats inside
    assert not train & val and not train & test and not val & test


def symbols(task: Task, ids: torch.Tensor) -> list[int]:
    assert task.decode is not None
    text = task.decode(ids.tolist())
    return [int(s) for s in text.split()]


@pytest.mark.parametrize(("name", "expected"), [
    ("copy", lambda s: s),
    ("reverse", lambda s: s[::-1]),
    ("sort", sorted),
])
def test_symbol_tasks_targets(name: str, expected: object) -> None:
    task = get_task(name, min_length=3, max_length=9, num_symbols=7, seed=11, **SMALL)
    assert task.kind == "seq2seq" and task.vocab_size == 4 + 7
    assert (len(task.train), len(task.val), len(task.test)) == (300, 60, 60)
    lengths = set()
    for split in (task.train, task.val, task.test):
        for x, y in split:
            assert int(y[0]) == task.bos_id and int(y[-1]) == task.eos_id
            assert int(x.min()) >= 4 and int(x.max()) < task.vocab_size
            source = symbols(task, x)
            lengths.add(len(source))
            assert symbols(task, y) == expected(source)  # type: ignore[operator]
    assert lengths == set(range(3, 10))
    assert task.metric == "token_accuracy"
    longest = max(max(len(x) for x, _ in s) for s in (task.train, task.val, task.test))
    longest_target = max(max(len(y) for _, y in s) for s in (task.train, task.val, task.test))
    assert longest == task.extra["max_input_length"] == 9
    assert longest_target == task.extra["max_target_length"] == 11
    check_splits_disjoint(task)


def test_symbol_codec_round_trip() -> None:
    task = get_task("reverse", num_symbols=12, **SMALL)
    assert task.encode is not None and task.decode is not None
    assert task.decode(task.encode("11 0 5 5")) == "11 0 5 5"
    with pytest.raises(ValueError, match="outside"):
        task.encode("12")


def test_addition_targets() -> None:
    task = get_task("addition", min_digits=1, max_digits=4, seed=2, **SMALL)
    assert task.decode is not None and task.encode is not None
    widths = set()
    for split in (task.train, task.val, task.test):
        for x, y in split:
            a_text, b_text = task.decode(x.tolist()).split("+")
            widths.update({len(a_text), len(b_text)})
            assert a_text == str(int(a_text)) and b_text == str(int(b_text))  # no leading 0
            assert task.decode(y.tolist()) == str(int(a_text) + int(b_text))
            assert int(y[0]) == task.bos_id and int(y[-1]) == task.eos_id
    assert widths == {1, 2, 3, 4}
    assert max(len(x) for x, _ in task.train) <= task.extra["max_input_length"] == 9
    assert max(len(y) for _, y in task.train) <= task.extra["max_target_length"] == 7
    assert task.decode(task.encode("907+15")) == "907+15"
    check_splits_disjoint(task)


def test_recall_labels() -> None:
    task = get_task("recall", num_pairs=5, num_keys=9, num_values=6, seed=4, **SMALL)
    assert task.kind == "classification" and task.num_classes == 6
    assert task.decode is not None and task.encode is not None
    for split in (task.train, task.val, task.test):
        for x, y in split:
            tokens = task.decode(x.tolist()).split()
            assert len(tokens) == 12 and tokens[-2] == "?"
            pairs = dict(zip(tokens[0:10:2], tokens[1:10:2], strict=True))
            assert len(pairs) == 5  # keys are distinct
            assert pairs[tokens[-1]] == f"v{int(y)}"
            assert task.encode(" ".join(tokens)) == x.tolist()
    labels = torch.stack([y for _, y in task.train])
    assert set(labels.tolist()) == set(range(6))
    check_splits_disjoint(task)


@pytest.mark.parametrize("name", ["copy", "addition", "recall"])
def test_seed_determinism(name: str) -> None:
    a, b, c = (get_task(name, seed=s, **SMALL) for s in (1, 1, 2))
    assert inputs_of(a) == inputs_of(b)
    assert all(torch.equal(p[1], q[1]) for p, q in zip(a.test, b.test, strict=True))
    assert inputs_of(a)[0] != inputs_of(c)[0]


def test_too_small_input_space_is_reported() -> None:
    with pytest.raises(ValueError, match="too few distinct inputs"):
        get_task("copy", min_length=1, max_length=1, num_symbols=3, **SMALL)
    with pytest.raises(ValueError, match="num_pairs <= num_keys"):
        get_task("recall", num_pairs=5, num_keys=3)
    with pytest.raises(ValueError, match="min_length <= max_length"):
        get_task("sort", min_length=5, max_length=2)
