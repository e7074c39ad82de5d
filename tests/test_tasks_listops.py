"""ListOps: generated expressions are checked against an independent stack evaluator."""

from __future__ import annotations

import pytest
import torch

from attnkit.tasks import Task, get_task
from attnkit.tasks.listops import apply_operator


def stack_evaluate(tokens: list[str]) -> tuple[int, int]:
    """(value, deepest nesting) of a token list, by a left-to-right stack (no recursion)."""
    stack: list[tuple[str, list[int]]] = []
    depth = deepest = 0
    result = None
    for token in tokens:
        if token.startswith("["):
            stack.append((token[1:], []))
            depth += 1
            deepest = max(deepest, depth)
        elif token == "]":
            op, args = stack.pop()
            depth -= 1
            if op == "MIN":
                value = min(args)
            elif op == "MAX":
                value = max(args)
            elif op == "SM":
                value = sum(args) % 10
            else:  # MED: middle element, the lower middle's average rounded down when even
                ordered = sorted(args)
                mid = len(ordered) // 2
                value = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
            if stack:
                stack[-1][1].append(value)
            else:
                result = value
        else:
            stack[-1][1].append(int(token))
    assert result is not None and not stack, "malformed expression"
    return result, deepest


@pytest.fixture(scope="module")
def listops() -> Task:
    return get_task("listops", num_train=600, num_val=100, num_test=100, max_depth=4,
                    max_args=6, operator_probability=0.35, min_length=10, max_length=90, seed=7)


def test_values_match_independent_evaluator(listops: Task) -> None:
    assert listops.decode is not None
    depths = set()
    for split in (listops.train, listops.val, listops.test):
        for x, y in split:
            tokens = listops.decode(x.tolist()).split()
            value, depth = stack_evaluate(tokens)
            assert value == int(y)
            assert 10 <= len(tokens) <= 90 and depth <= 4
            depths.add(depth)
    assert depths >= {2, 3, 4}
    assert listops.extra["max_input_length"] == 90


def test_labels_cover_all_values_and_splits_disjoint(listops: Task) -> None:
    labels = torch.stack([y for _, y in listops.train])
    assert set(labels.tolist()) == set(range(10))
    keys = [{tuple(x.tolist()) for x, _ in s} for s in (listops.train, listops.val, listops.test)]
    assert len(keys[0]) == 600 and not keys[0] & keys[1] and not keys[0] & keys[2]
    assert not keys[1] & keys[2]


def test_encode_decode_round_trip(listops: Task) -> None:
    assert listops.encode is not None and listops.decode is not None
    text = "[MAX 2 9 [MIN 4 7 ] 0 ]"
    ids = listops.encode(text)
    assert listops.decode(ids) == text and 0 not in ids
    assert max(ids) < listops.vocab_size  # type: ignore[operator]
    with pytest.raises(ValueError, match="not ListOps tokens"):
        listops.encode("[MAX 2 X ]")


def test_operator_semantics() -> None:
    assert apply_operator("MED", [1, 2, 3, 4]) == 2  # int(2.5)
    assert apply_operator("MED", [7, 1, 3]) == 3
    assert apply_operator("SM", [9, 8, 7]) == 4
    assert apply_operator("MIN", [4, 2, 8]) == 2 and apply_operator("MAX", [4, 2, 8]) == 8
    with pytest.raises(ValueError, match="unknown ListOps operator"):
        apply_operator("AVG", [1])


def test_seed_and_limits() -> None:
    kwargs = {"num_train": 50, "num_val": 10, "num_test": 10, "max_length": 60}
    a, b, c = (get_task("listops", seed=s, **kwargs) for s in (0, 0, 1))
    assert [x.tolist() for x, _ in a.train] == [x.tolist() for x, _ in b.train]
    assert [x.tolist() for x, _ in a.train] != [x.tolist() for x, _ in c.train]
    with pytest.raises(ValueError, match="min_length <= max_length"):
        get_task("listops", min_length=50, max_length=20)
