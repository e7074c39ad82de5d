"""Training objectives by value: label smoothing, pad masking, token accuracy, teacher forcing.

The expected numbers are computed here token by token in float64 from the definitions:
smoothed cross-entropy ``(1 - e) * -log p_y + e * mean_v(-log p_v)`` (Szegedy et al., 2016)
averaged over the non-pad tokens; ``loss_sum`` the plain negative log-likelihood summed over
them; ``correct`` the non-pad tokens whose argmax is the label.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from attnkit.tasks.base import Task
from attnkit.train.data import Batch
from attnkit.train.objectives import metrics_from_stats, objective_for

PAD = 2  # not 0: a pad id hard-coded anywhere would show


class FixedLogits(nn.Module):
    """Returns given logits and records what it was called with."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.calls: list[tuple[Any, ...]] = []

    def forward(self, *args: Any) -> Tensor:
        self.calls.append(args)
        return self.logits


def _task(kind: str, vocab: int) -> Task:
    return Task(name="t", kind=kind, modality="tokens", train=[], val=[], test=[],  # type: ignore[arg-type]
                vocab_size=vocab, num_classes=vocab, pad_id=PAD)


def _expected(logits: Tensor, labels: Tensor, smoothing: float, pad: int | None
              ) -> tuple[float, float, int, int]:
    """(mean smoothed loss, summed NLL, correct, count) over the non-pad positions."""
    rows = logits.reshape(-1, logits.shape[-1]).double().tolist()
    flat = labels.reshape(-1).tolist()
    smoothed, nll, correct, count = 0.0, 0.0, 0, 0
    for row, label in zip(rows, flat):
        if label == pad:
            continue
        top = max(row)
        log_z = top + math.log(sum(math.exp(x - top) for x in row))
        neg_log_p = [log_z - x for x in row]
        smoothed += (1 - smoothing) * neg_log_p[label] + smoothing * sum(neg_log_p) / len(row)
        nll += neg_log_p[label]
        correct += int(row.index(top) == label)
        count += 1
    return smoothed / count, nll, correct, count


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_language_model_loss_smoothing_pad_and_accuracy(smoothing: float) -> None:
    g = torch.Generator().manual_seed(0)
    vocab = 7
    logits = torch.randn(3, 5, vocab, generator=g) * 2
    labels = torch.randint(0, vocab, (3, 5), generator=g)
    labels[0, 3:] = PAD
    labels[2, 1] = PAD
    labels[1] = logits[1].argmax(-1)  # a row of sure hits, so accuracy is not near zero
    labels[1, 4] = PAD
    model = FixedLogits(logits)
    inputs = torch.randint(0, vocab, (3, 5), generator=g)
    loss, stats = objective_for(_task("language_model", vocab))(
        model, Batch(inputs, labels), _task("language_model", vocab), smoothing)
    want_loss, want_nll, want_correct, want_count = _expected(logits, labels, smoothing, PAD)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    assert stats["loss_sum"].item() == pytest.approx(want_nll, rel=1e-5)
    assert int(stats["correct"]) == want_correct and int(stats["count"]) == want_count < 15
    assert want_correct >= 4
    metrics = metrics_from_stats({k: float(v) for k, v in stats.items()}, "language_model")
    assert metrics["token_accuracy"] == pytest.approx(want_correct / want_count)
    assert metrics["loss"] == pytest.approx(want_nll / want_count, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(want_nll / want_count), rel=1e-5)
    assert "accuracy" not in metrics
    assert torch.equal(model.calls[0][0], inputs)


def test_pad_positions_do_not_change_the_loss() -> None:
    """Whatever the logits at pad positions, loss and statistics stay the same."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 5, generator=g)
    labels = torch.randint(0, 5, (2, 6), generator=g)
    labels[:, 4:] = PAD
    task = _task("language_model", 5)
    changed = logits.clone()
    changed[:, 4:] = 100 * torch.randn(2, 2, 5, generator=g)
    a = objective_for(task)(FixedLogits(logits), Batch(labels, labels), task, 0.1)
    b = objective_for(task)(FixedLogits(changed), Batch(labels, labels), task, 0.1)
    assert a[0].item() == pytest.approx(b[0].item())
    for key in ("loss_sum", "correct", "count"):
        assert a[1][key].item() == pytest.approx(b[1][key].item())


def test_seq2seq_teacher_forcing_shifts_targets_by_one() -> None:
    """The decoder reads targets[:, :-1] and is scored against targets[:, 1:]."""
    g = torch.Generator().manual_seed(2)
    vocab = 6
    targets = torch.tensor([[1, 4, 5, 3, 0], [1, 5, 0, PAD, PAD]])
    logits = torch.randn(2, 4, vocab, generator=g)
    model = FixedLogits(logits)
    source, lengths = torch.randint(3, 6, (2, 3), generator=g), torch.tensor([3, 2])
    task = _task("seq2seq", vocab)
    loss, stats = objective_for(task)(model, Batch(source, targets, lengths), task, 0.2)
    got_source, got_target_in, got_lengths = model.calls[0]
    assert torch.equal(got_source, source) and torch.equal(got_lengths, lengths)
    assert torch.equal(got_target_in, targets[:, :-1])
    want_loss, want_nll, want_correct, want_count = _expected(logits, targets[:, 1:], 0.2, PAD)
    assert want_count == 6 and int(stats["count"]) == want_count
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    assert stats["loss_sum"].item() == pytest.approx(want_nll, rel=1e-5)
    assert int(stats["correct"]) == want_correct


@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_classification_loss_smoothing_and_accuracy(smoothing: float) -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 4, generator=g)
    targets = torch.randint(0, 4, (8,), generator=g)
    targets[:3] = logits[:3].argmax(-1)
    task = _task("classification", 4)
    loss, stats = objective_for(task)(FixedLogits(logits), Batch(logits, targets), task,
                                      smoothing)
    want_loss, want_nll, want_correct, _ = _expected(logits, targets, smoothing, None)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    assert stats["loss_sum"].item() == pytest.approx(want_nll, rel=1e-5)
    assert int(stats["correct"]) == want_correct and int(stats["count"]) == 8
    metrics = metrics_from_stats({k: float(v) for k, v in stats.items()}, "classification")
    assert metrics == pytest.approx({"loss": want_nll / 8, "accuracy": want_correct / 8})


def test_unknown_task_kind_is_named() -> None:
    task = _task("language_model", 3)
    task.kind = "ranking"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="has kind 'ranking'"):
        objective_for(task)
