"""Faithfulness metrics and the randomization sanity check on known values."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from torch import Tensor

from attnkit.explain import auc, cascading_randomization, gradient_relevance, perturbation_curve
from attnkit.explain import spearman as rank_correlation
from attnkit.explain.metrics import parameter_blocks
from attnkit.explain.toy import ToyClassifier


def test_auc_of_known_curves() -> None:
    xs = torch.linspace(0, 1, 11)
    assert auc(xs, xs) == pytest.approx(0.5)
    assert auc(xs, 1 - xs) == pytest.approx(0.5)
    assert auc(xs, xs**2) == pytest.approx(1 / 3, abs=2e-3)  # trapezoid error h^2/6 / 1
    assert auc([0, 2], [1, 3]) == pytest.approx(2.0)  # normalized by the x range
    with pytest.raises(ValueError, match="increasing"):
        auc([1, 1], [0, 1])


# Four features worth 4, 3, 2, 1 (out of 10); the model's score is the kept worth.
FEATURES = torch.tensor([[4.0, 3.0, 2.0, 1.0]])


def kept_worth(x: Tensor) -> Tensor:
    return x.sum(-1) / 10


def drop(x: Tensor, keep: Tensor) -> Tensor:
    return x * keep


def test_perturbation_curves_by_hand() -> None:
    most = perturbation_curve(kept_worth, FEATURES, FEATURES, drop, steps=4)
    torch.testing.assert_close(most.values, torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0]))
    assert most.auc == pytest.approx(0.375)
    least = perturbation_curve(kept_worth, FEATURES, FEATURES, drop, steps=4,
                               most_relevant_first=False)
    torch.testing.assert_close(least.values, torch.tensor([1.0, 0.9, 0.7, 0.4, 0.0]))
    assert least.auc == pytest.approx(0.625)
    inserted = perturbation_curve(kept_worth, FEATURES, FEATURES, drop, steps=4, insert=True)
    torch.testing.assert_close(inserted.values, torch.tensor([0.0, 0.4, 0.7, 0.9, 1.0]))
    assert inserted.auc == pytest.approx(0.625)
    # a reversed (wrong) explanation does worse on deletion than the faithful one
    wrong = perturbation_curve(kept_worth, FEATURES, -FEATURES, drop, steps=4)
    assert wrong.auc > most.auc


def test_spearman_known_values_and_scipy() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert rank_correlation(a, a * 10) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    # d = (-1, 1, -1, 1, 0): rho = 1 - 6 * 4 / (5 * 24) = 0.8
    assert rank_correlation(a, torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0])) == pytest.approx(0.8)
    x, y = torch.randn(30), torch.randn(30)
    assert rank_correlation(x, y) == pytest.approx(spearmanr(x.numpy(), y.numpy()).statistic)
    assert rank_correlation(torch.ones(4), a[:4]) == 0.0


def test_parameter_blocks_group_by_block_index() -> None:
    names = [name for name, _ in parameter_blocks(ToyClassifier(depth=2))]
    assert names == ["embed", "blocks.0", "blocks.1", "norm", "head"]


def test_cascading_randomization_decorrelates_relevance() -> None:
    model = ToyClassifier(depth=2, dim=16).eval()
    tokens = torch.randint(0, 20, (4, 8))

    def explain(m: torch.nn.Module) -> Tensor:
        return gradient_relevance(m, tokens).source[:, 0, 1:]

    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = cascading_randomization(model, explain)
    assert [s.block for s in steps] == ["head", "norm", "blocks.1", "blocks.0", "embed"]
    assert all(-1.0 <= s.spearman <= 1.0 for s in steps)
    assert steps[-1].spearman < 0.8
    # the original model was not touched (a copy was randomized)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    with pytest.raises(ValueError, match="unknown blocks"):
        cascading_randomization(model, explain, blocks=["nope"])


class _TwoBlocks(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)])
        self.head = torch.nn.Linear(3, 2)


@pytest.mark.parametrize("depends_on, expected", [
    (None, [1.0, 1.0, 1.0]),  # a map that ignores the model: the check's failing case
    ("head", [0.0, 0.0, 0.0]),  # half the batch reverses once the head is randomized
    ("blocks.0", [1.0, 1.0, 0.0]),  # ... only once the cascade reaches the first block
])
def test_cascading_randomization_reports_known_correlations(depends_on: str | None,
                                                            expected: list[float]) -> None:
    """Two maps per call: one fixed (rho 1 always), one reversed (rho -1) once the block it
    depends on is re-initialized; the step reports the batch mean, in cascade order."""
    model = _TwoBlocks()
    base = torch.tensor([0.1, 0.7, 0.3, 0.9, 0.5])
    original = {k: v.clone() for k, v in model.state_dict().items()}

    def explain(m: torch.nn.Module) -> Tensor:
        intact = depends_on is None or all(
            torch.equal(v, original[k]) for k, v in m.state_dict().items()
            if k.startswith(depends_on + "."))
        return torch.stack([base, base if intact else -base])

    steps = cascading_randomization(model, explain)
    assert [s.block for s in steps] == ["head", "blocks.1", "blocks.0"]
    assert [s.spearman for s in steps] == pytest.approx(expected)
