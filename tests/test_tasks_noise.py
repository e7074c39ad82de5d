"""Noise perturbations and robustness curves."""

from __future__ import annotations

import pytest
import torch

from attnkit.tasks import Task, get_task
from attnkit.tasks.noise import (
    gaussian_noise,
    perturbation_for,
    robustness_curve,
    task_robustness,
    token_replacement,
)
from attnkit.tasks.splits import SequencePairDataset, TensorPairDataset


@pytest.mark.parametrize("level", [0.05, 0.3, 1.5])
def test_gaussian_noise_has_the_stated_std(level: float) -> None:
    x = torch.rand(40, 1, 28, 28)
    noisy = gaussian_noise(x, level, torch.Generator().manual_seed(0))
    diff = noisy - x
    assert abs(float(diff.std()) - level) < 0.02 * level
    assert abs(float(diff.mean())) < 0.02 * level
    assert noisy.shape == x.shape and noisy.dtype == x.dtype


def test_level_zero_is_identity() -> None:
    x = torch.randn(6, 13)
    assert torch.equal(gaussian_noise(x, 0.0, torch.Generator()), x)
    tokens = torch.randint(1, 20, (50,))
    perturb = token_replacement(vocab_size=20)
    assert torch.equal(perturb(tokens, 0.0, torch.Generator()), tokens)


def test_noise_errors() -> None:
    with pytest.raises(ValueError, match="noise level"):
        gaussian_noise(torch.randn(3), -0.1, torch.Generator())
    with pytest.raises(ValueError, match="float inputs"):
        gaussian_noise(torch.arange(3), 0.1, torch.Generator())
    with pytest.raises(ValueError, match=r"\[0, 1.0\]"):
        token_replacement(vocab_size=9)(torch.arange(1, 5), 1.5, torch.Generator())


@pytest.mark.parametrize("level", [0.1, 0.5, 1.0])
def test_token_replacement_changes_the_stated_fraction(level: float) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(2, 30, (20000,))
    x[::10] = 0  # padding
    x[5::10] = 1  # a protected separator
    perturb = token_replacement(vocab_size=30, pad_id=0, protected=(1,))
    noisy = perturb(x, level, generator)
    fixed = (x == 0) | (x == 1)
    assert torch.equal(noisy[fixed], x[fixed])  # pad and protected ids never touched
    changed = (noisy != x)[~fixed].float().mean()
    assert abs(float(changed) - level) < 0.015
    assert int(noisy[~fixed].min()) >= 2 and int(noisy.max()) < 30  # replacements are valid ids


def test_perturbation_for_picks_by_modality() -> None:
    recall = get_task("recall", num_train=20, num_val=5, num_test=5)
    perturb = perturbation_for(recall)
    x = recall.train[0][0]
    noisy = perturb(x, 1.0, torch.Generator().manual_seed(0))
    separator = recall.extra["separator_id"]
    assert torch.equal(noisy == separator, x == separator)
    assert bool((noisy != x)[x != separator].all())
    image_task = Task(name="t", kind="classification", modality="image", train=[], val=[],
                      test=[])
    assert perturbation_for(image_task) is gaussian_noise


def sign_dataset(n: int) -> TensorPairDataset:
    """Label 1 when the features are +0.3, else 0 (-0.3): a threshold at 0 separates them."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 2, (n,), generator=generator)
    x = (labels.float() * 0.6 - 0.3)[:, None].expand(n, 8).clone()
    return TensorPairDataset(x, labels)


def test_robustness_curve_falls_with_noise() -> None:
    dataset = sign_dataset(2000)

    def predict(inputs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        assert lengths is None  # fixed-size inputs come unpadded
        return (inputs.mean(dim=-1) > 0).long()

    levels = [0.0, 0.5, 2.0, 8.0]
    curve = robustness_curve(predict, dataset, levels, seed=5, batch_size=300)
    assert curve.levels == levels and curve.num_examples == 2000
    assert curve.accuracy[0] == 1.0
    assert curve.accuracy[0] > curve.accuracy[1] > curve.accuracy[2] > curve.accuracy[3]
    assert 0.4 < curve.accuracy[3] < 0.65  # near chance at huge noise
    # Same seed, same noise: identical curves (fair comparison between models).
    again = robustness_curve(predict, dataset, levels, seed=5, batch_size=77)
    assert again.accuracy == curve.accuracy
    assert robustness_curve(predict, dataset, levels, seed=6).accuracy[1:] != curve.accuracy[1:]


def test_robustness_curve_pads_variable_length_tokens() -> None:
    xs = [torch.full((n,), 3 + n % 2) for n in (3, 5, 4, 6)]
    labels = torch.tensor([n % 2 for n in (3, 5, 4, 6)])
    dataset = SequencePairDataset(xs, labels)
    seen = []

    def predict(inputs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        assert lengths is not None
        seen.append(lengths.tolist())
        return (inputs[:, 0] == 4).long()

    curve = robustness_curve(predict, dataset, [0.0], batch_size=4,
                             perturb=token_replacement(vocab_size=5))
    assert curve.accuracy == [1.0] and seen == [[3, 5, 4, 6]]
    with pytest.raises(ValueError, match="one label each"):
        robustness_curve(lambda i, n: torch.zeros(1), dataset, [0.0],
                         perturb=token_replacement(vocab_size=5))
    with pytest.raises(ValueError, match="levels is empty"):
        robustness_curve(predict, dataset, [])


def test_task_robustness_on_a_token_task() -> None:
    task = get_task("recall", num_pairs=4, num_keys=8, num_values=5, num_train=50, num_val=50,
                    num_test=200)

    def oracle(inputs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """Reads the answer out of the (possibly noisy) input, as a perfect model would."""
        first_key, first_value = task.extra["first_key"], task.extra["first_value"]
        out = []
        for row in inputs.tolist():
            pairs = {row[i]: row[i + 1] - first_value for i in range(0, 8, 2)}
            out.append(pairs.get(row[-1], -1))
        assert first_key == 2
        return torch.tensor(out)

    curve = task_robustness(oracle, task, [0.0, 0.3, 1.0], seed=0)
    assert curve.accuracy[0] == 1.0 and curve.accuracy[0] > curve.accuracy[1] > curve.accuracy[2]
    assert curve.as_dict()["noise"] == "token_replacement" and curve.num_examples == 200
    with pytest.raises(ValueError, match="not classification"):
        task_robustness(oracle, get_task("copy", num_train=5, num_val=5, num_test=5), [0.0])
