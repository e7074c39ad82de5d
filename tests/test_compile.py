"""Every model family and every registered backend under torch.compile (CPU) equals eager.

Compiled with ``aot_eager`` (Dynamo capture + AOTAutograd, no code generation), which checks that
each path traces, and one Inductor run (C++ code generation, slower to compile) for the model the
demo trains. Graph breaks are allowed (they only cost speed); failures are not.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnkit import attention, masks
from attnkit.backends import list_backends
from attnkit.models import (
    ModelConfig,
    build_audio_transformer,
    build_decoder_lm,
    build_encoder_classifier,
    build_seq2seq,
    build_vit,
)

TINY = ModelConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1, dropout=0.0, max_length=32,
                   patch_size=4)
CLOSE = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()


def _family(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    tokens = torch.randint(1, 20, (2, 9))
    if name == "vit":
        return build_vit(TINY, image_shape=(1, 8, 8), num_classes=3), (torch.randn(2, 1, 8, 8),)
    if name == "encoder":
        tokens[1, 5:] = 0  # padding
        return build_encoder_classifier(TINY, vocab_size=20, num_classes=3), (tokens,)
    if name == "audio":
        return (build_audio_transformer(TINY, features=5, num_classes=3),
                (torch.randn(2, 9, 5), torch.tensor([9, 4])))
    if name == "decoder":
        return build_decoder_lm(TINY, vocab_size=20), (tokens,)
    if name == "seq2seq":
        return (build_seq2seq(TINY, source_vocab_size=20, target_vocab_size=20, pad_id=0),
                (tokens, torch.randint(1, 20, (2, 6))))
    raise AssertionError(name)


@pytest.mark.parametrize("family", ["vit", "encoder", "audio", "decoder",
                                    pytest.param("seq2seq", marks=pytest.mark.slow)])
def test_model_family_compiles_forward_and_backward(family: str) -> None:
    model, inputs = _family(family)
    eager_out = model(*inputs)
    eager_out.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager")
    out = compiled(*inputs)
    out.square().mean().backward()
    torch.testing.assert_close(out, eager_out, **CLOSE)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(eager_grads)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, **CLOSE)


@pytest.mark.parametrize("backend", [
    pytest.param(name, marks=pytest.mark.slow) if name == "flex" else name  # compiles flex itself
    for name in list_backends()])
@pytest.mark.parametrize("mask_name", ["none", "causal", "padding"])
def test_backend_compiles(backend: str, mask_name: str) -> None:
    """Forward and gradients; forward only where the backend has no backward (flex on CPU)."""
    mask = {"none": None, "causal": masks.causal(),
            "padding": masks.padding(torch.tensor([7, 3]))}[mask_name]
    q, k, v = (torch.randn(2, 2, 7, 8) for _ in range(3))

    def run(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return attention(a, b, c, mask=mask, backend=backend)

    grad = True
    try:
        eager = run(*(t.requires_grad_() for t in (q, k, v)))
    except ValueError:
        grad = False
        q, k, v = (t.detach() for t in (q, k, v))
        try:
            eager = run(q, k, v)
        except ValueError as err:
            pytest.skip(f"{backend} does not run {mask_name} eagerly either: {err}")
    out = torch.compile(run, backend="aot_eager")(q, k, v)
    torch.testing.assert_close(out, eager, **CLOSE)
    if not grad:
        return
    cotangent = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), cotangent)
    want = torch.autograd.grad(eager, (q, k, v), cotangent)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **CLOSE)


@pytest.mark.slow
def test_inductor_compiles_the_demo_vit() -> None:
    """Inductor generates C++ for the whole model (gcc): the path users take by default."""
    model, inputs = _family("vit")
    model.eval()
    with torch.no_grad():
        eager = model(*inputs)
        compiled = torch.compile(model)(*inputs)
    torch.testing.assert_close(compiled, eager, **CLOSE)
