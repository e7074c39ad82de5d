"""ListOps: evaluate nested list operations, the Long Range Arena task (Tay et al., 2021).

The grammar (Nangia & Bowman, 2018) nests four operators over single digits::

    [MAX 2 9 [MIN 4 7 ] 0 ]   = 9
    MIN, MAX    the smallest / largest argument
    MED         the median, rounded down when it falls between two arguments (LRA's int(median))
    SM          the sum modulo 10

Expressions are drawn from a seed: the root is an operator; below it, while the depth is under
``max_depth``, each argument is another operator with probability ``operator_probability`` and
otherwise a digit; an operator takes ``min_args..max_args`` arguments. Only expressions whose
token count lies in ``min_length..max_length`` are kept, and no expression repeats within or
across splits. LRA's setting is ``max_depth=10, max_args=10, min_length=500, max_length=2000``
(``operator_probability=0.25``); the defaults here are smaller so that a CPU trains on them in
minutes.

Inputs x: (L,) int64 token ids (variable L); labels y: () int64, the value 0..9.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np

from attnkit.tasks.base import Task, register_task
from attnkit.tasks.generated import draw_distinct, to_datasets

__all__ = ["LRA_SETTINGS", "OPERATORS", "TOKENS", "evaluate_tree", "load_listops", "sample_tree",
           "tree_tokens"]

OPERATORS = ("MIN", "MAX", "MED", "SM")
# Token strings by id; id 0 is padding.
TOKENS = ("<pad>", *(str(d) for d in range(10)), *(f"[{op}" for op in OPERATORS), "]")
TOKEN_IDS = {token: i for i, token in enumerate(TOKENS)}

#: The generator settings of LRA's ListOps (``load_listops(**LRA_SETTINGS)``): up to ten levels and
#: ten arguments, 500-2,000 tokens. Like LRA's generator, an argument is a nested operator with
#: probability 0.25 and a digit otherwise. The values 0..9 are skewed: MIN and MAX of many
#: arguments favour 0 and 9 (17% each in a 200-expression draw, 8 only 4%).
LRA_SETTINGS: dict[str, int | float] = {"max_depth": 10, "min_args": 2, "max_args": 10,
                                        "operator_probability": 0.25, "min_length": 500,
                                        "max_length": 2000}

# A tree is a digit or (operator, [arguments]).
Tree: TypeAlias = "int | tuple[str, list[Tree]]"


def apply_operator(operator: str, values: Sequence[int]) -> int:
    """The value of one operator over digit arguments."""
    if operator == "MIN":
        return min(values)
    if operator == "MAX":
        return max(values)
    if operator == "MED":
        return int(statistics.median(values))
    if operator == "SM":
        return sum(values) % 10
    raise ValueError(f"unknown ListOps operator {operator!r}; known: {OPERATORS}")


def evaluate_tree(tree: Tree) -> int:
    """The value (0..9) of an expression tree."""
    if isinstance(tree, int):
        return tree
    operator, arguments = tree
    return apply_operator(operator, [evaluate_tree(a) for a in arguments])


def tree_tokens(tree: Tree) -> list[str]:
    """Token strings of a tree: ``["[MAX", "2", "9", "]"]``."""
    if isinstance(tree, int):
        return [str(tree)]
    operator, arguments = tree
    out = [f"[{operator}"]
    for argument in arguments:
        out += tree_tokens(argument)
    out.append("]")
    return out


def sample_tree(rng: np.random.Generator, *, max_depth: int, min_args: int, max_args: int,
                operator_probability: float, depth: int = 1) -> Tree:
    """A random expression whose root is an operator, nested at most ``max_depth`` deep."""
    operator = OPERATORS[int(rng.integers(len(OPERATORS)))]
    arguments: list[Tree] = []
    for _ in range(int(rng.integers(min_args, max_args + 1))):
        if depth < max_depth and rng.random() < operator_probability:
            arguments.append(sample_tree(rng, max_depth=max_depth, min_args=min_args,
                                         max_args=max_args,
                                         operator_probability=operator_probability,
                                         depth=depth + 1))
        else:
            arguments.append(int(rng.integers(10)))
    return operator, arguments


@register_task("listops", "ListOps (LRA grammar MIN/MAX/MED/SM), value 0-9, generated")
def load_listops(*, num_train: int = 20000, num_val: int = 2000, num_test: int = 2000,
                 max_depth: int = 6, min_args: int = 2, max_args: int = 5,
                 operator_probability: float = 0.25, min_length: int = 16,
                 max_length: int = 256, seed: int = 0, max_examples: int | None = None) -> Task:
    """Generate ListOps expressions.

    Args:
        num_train, num_val, num_test: split sizes (distinct expressions).
        max_depth: deepest operator nesting (the root is depth 1).
        min_args, max_args: arguments per operator.
        operator_probability: chance that an argument is a nested operator (not a digit).
        min_length, max_length: accepted token counts (brackets, operators and digits).
        seed: generator seed.
        max_examples: cap every split at this many examples.
    """
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    if not 1 <= min_args <= max_args:
        raise ValueError(f"need 1 <= min_args <= max_args, got {min_args}, {max_args}")
    if not 0.0 <= operator_probability < 1.0:
        raise ValueError(f"operator_probability must lie in [0, 1), got {operator_probability}")
    if not 3 <= min_length <= max_length:
        raise ValueError(f"need 3 <= min_length <= max_length, got {min_length}, {max_length}")

    def sample(rng: np.random.Generator) -> tuple[list[int], int] | None:
        tree = sample_tree(rng, max_depth=max_depth, min_args=min_args, max_args=max_args,
                           operator_probability=operator_probability)
        tokens = tree_tokens(tree)
        if not min_length <= len(tokens) <= max_length:
            return None
        return [TOKEN_IDS[t] for t in tokens], evaluate_tree(tree)

    sizes = [num_train, num_val, num_test]
    if max_examples is not None:
        sizes = [min(s, max_examples) for s in sizes]
    train, val, test = to_datasets(draw_distinct(sample, lambda p: tuple(p[0]), sizes, seed,
                                                 task="listops"))

    def encode(text: str) -> list[int]:
        unknown = [t for t in text.split() if t not in TOKEN_IDS or t == "<pad>"]
        if unknown:
            raise ValueError(f"not ListOps tokens: {unknown}; tokens are {TOKENS[1:]}")
        return [TOKEN_IDS[t] for t in text.split()]

    def decode(ids: list[int]) -> str:
        return " ".join(TOKENS[int(i)] for i in ids if int(i) != 0)

    return Task(name="listops", kind="classification", modality="tokens", train=train, val=val,
                test=test, num_classes=10, vocab_size=len(TOKENS), input_shape=(0,), pad_id=0,
                encode=encode, decode=decode,
                source=f"generated (ListOps grammar of Nangia & Bowman 2018 / LRA, seed {seed})",
                extra={"max_depth": max_depth, "max_args": max_args, "min_length": min_length,
                       "max_length": max_length, "max_input_length": max_length,
                       "operator_probability": operator_probability,
                       # noise.perturbation_for replaces digits only, so a noisy expression
                       # stays well-formed (its label is still the clean expression's value)
                       "protected_ids": tuple(range(11, len(TOKENS)))})
