"""attnkit.explain.capture on Hugging Face models running attnkit: eager's exact weights and
gradients, without switching the model to eager."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("transformers", reason="pip install 'attnkit[hf]'")

import attnkit.hf
from attnkit.explain import capture, gradient_relevance, relevance_from_steps
from attnkit.explain.capture import find_attention_layers
from attnkit.explain.relevance import RelevanceStep
from hf_tiny_models import BY_NAME, TinyArchitecture

HEADS = [0, 2]
LAYER = 1


@pytest.fixture(scope="module", autouse=True)
def registered() -> str:
    return attnkit.hf.register()


def eager_attentions(arch: TinyArchitecture, folder: Path, inputs: dict[str, Tensor]
                     ) -> tuple[nn.Module, tuple[Tensor, ...]]:
    model = arch.load(folder, "eager")
    with torch.no_grad():
        return model, model(**inputs, output_attentions=True).attentions


def query_rows(real: Tensor, weights: Tensor) -> Tensor:
    """(B, Lq) bool of the query rows to compare: real tokens (images: all)."""
    if real.shape[1] == weights.shape[2]:
        return real
    return torch.ones(weights.shape[0], weights.shape[2], dtype=torch.bool)


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit", "llama", "mistral", "gemma2"])
def test_captured_weights_equal_eager_output_attentions(name: str, tmp_path: Path) -> None:
    arch = BY_NAME[name]
    folder = arch.save(tmp_path)
    inputs, real = arch.batch()
    model = arch.load(folder, "attnkit")
    with torch.no_grad():
        plain = model(**inputs).logits
        with capture(model, layers=[LAYER], heads=HEADS) as cap:
            captured_logits = model(**inputs).logits
    assert torch.equal(plain, captured_logits)  # capture leaves the forward alone
    _, attentions = eager_attentions(arch, folder, inputs)
    want = attentions[LAYER][:, HEADS]  # (B, 2, Lq, Lk)
    record = cap.records[0]
    assert len(cap) == 1 and record.heads == tuple(HEADS) and not record.cross
    assert record.weights.shape == want.shape
    rows = query_rows(real, want)
    diff = (record.weights - want).abs().amax(dim=(1, 3))[rows].max().item()
    assert diff <= 1e-6, f"{name}: captured weights differ from eager by {diff:.2e}"
    assert want.std() > 1e-3  # not uniform weights


def test_layers_are_found_by_name_and_probes_leave_the_state_dict_alone(tmp_path: Path) -> None:
    arch = BY_NAME["gpt2"]
    model = arch.load(arch.save(tmp_path), "attnkit")
    keys = set(model.state_dict())
    names = [n for n, _ in find_attention_layers(model)]
    assert names == ["transformer.h.0.attn", "transformer.h.1.attn"]
    assert set(model.state_dict()) == keys
    with torch.no_grad(), capture(model, layers=["transformer.h.0.attn"]) as cap:
        model(input_ids=torch.randint(0, 97, (1, 6)))
    assert cap.names == ["transformer.h.0.attn"] and cap[0].weights.shape == (1, 4, 6, 6)


def test_a_model_on_another_implementation_says_how_to_capture(tmp_path: Path) -> None:
    arch = BY_NAME["gpt2"]
    model = arch.load(arch.save(tmp_path), "sdpa")
    with pytest.raises(ValueError, match="attn_implementation='attnkit'"), capture(model):
        pass
    model.set_attn_implementation("attnkit")
    with torch.no_grad(), capture(model) as cap:
        model(input_ids=torch.randint(0, 97, (1, 5)))
    assert len(cap) == 2


def test_captured_gradients_equal_eager_autograd(tmp_path: Path) -> None:
    """dL/dA from the probe (dL/dout @ V^T) equals autograd through eager's weights."""
    arch = BY_NAME["llama"]
    folder = arch.save(tmp_path)
    inputs, real = arch.batch()
    model = arch.load(folder, "attnkit")
    with capture(model, layers=[LAYER], heads=HEADS, gradients=True) as cap:
        model(**inputs).logits[real].logsumexp(-1).sum().backward()
    eager = arch.load(folder, "eager")
    out = eager(**inputs, output_attentions=True)
    attentions = out.attentions[LAYER]
    (want,) = torch.autograd.grad(out.logits[real].logsumexp(-1).sum(), attentions)
    want = want[:, HEADS]
    # Compare real queries at real keys: a padded key's value differs between the two paths
    # (eager gives padded queries uniform weights, attnkit zeros), and A is 0 there anyway.
    pairs = (real[:, None, :, None] & real[:, None, None, :]).expand_as(want)
    got = cap.records[0].dense_grad()
    assert want.abs().max() > 1e-4
    diff = (got - want).abs()[pairs].max().item()
    assert diff <= 1e-5, f"captured dL/dA differs from eager autograd by {diff:.2e}"


class LogitsOnly(nn.Module):
    """A transformers classifier as ``ids -> logits`` (what attnkit's explain functions call)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits


def test_chefer_relevance_of_a_hf_classifier_equals_eager_math(tmp_path: Path) -> None:
    arch = BY_NAME["bert"]
    folder = arch.save(tmp_path)
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    ours = gradient_relevance(LogitsOnly(arch.load(folder, "attnkit")), ids, target=1)
    eager = arch.load(folder, "eager")
    out = eager(input_ids=ids, output_attentions=True)
    grads = torch.autograd.grad(out.logits[:, 1].sum(), out.attentions)
    steps = [RelevanceStep("source", a.detach(), g) for a, g in zip(out.attentions, grads)]
    want = relevance_from_steps(steps)
    torch.testing.assert_close(ours.source, want.source, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_output_attentions_work_without_eager(name: str, tmp_path: Path) -> None:
    """output_attentions=True on a model running attnkit returns eager's weights."""
    arch = BY_NAME[name]
    folder = arch.save(tmp_path)
    inputs, real = arch.batch()
    model = arch.load(folder, "attnkit")
    with torch.no_grad():
        ours = model(**inputs, output_attentions=True).attentions
        assert model(**inputs).attentions is None  # nothing computed unless asked
    _, theirs = eager_attentions(arch, folder, inputs)
    assert len(ours) == len(theirs) == 2
    for got, want in zip(ours, theirs):
        diff = (got - want).abs().amax(dim=(1, 3))[query_rows(real, want)].max().item()
        assert diff <= 1e-6
