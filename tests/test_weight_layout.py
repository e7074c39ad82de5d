"""Input-major weights (attnkit.models.weight_layout): the layout is in effect, and values,
tokens, training and checkpoints are those of PyTorch's default (output-major) layout."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_model
from torch import nn

from attnkit.models import (
    DecoderLM,
    build_decoder_lm,
    get_preset,
    set_weight_layout,
    weight_layout,
)
from attnkit.models.weight_layout import is_input_major
from attnkit.train import checkpoint as ckpt

VOCAB = 37


def twins(*, tie: bool = True, dtype: torch.dtype = torch.float32
          ) -> tuple[DecoderLM, DecoderLM]:
    """(input-major model, its output-major copy as built): same values, other strides."""
    config = dataclasses.replace(get_preset("tiny"), num_layers=2, tie_embeddings=tie)
    torch.manual_seed(0)
    plain = build_decoder_lm(config, vocab_size=VOCAB).to(dtype)
    with torch.no_grad():  # weights large enough that greedy tokens vary
        for p in plain.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    return set_weight_layout(copy.deepcopy(plain), "input_major"), plain


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_input_major_strides_are_in_effect() -> None:
    model, plain = twins()
    assert weight_layout(model) == "input_major" and weight_layout(plain) == "output_major"
    for linear in linears(model):
        out = linear.weight.shape[0]
        assert linear.weight.stride() == (1, out), linear  # the (in, out) matrix W^T
    assert model.head.weight is model.embedding.table.weight  # still tied, one Parameter
    assert model.embedding.table.weight.stride() == (1, VOCAB)
    for linear in linears(plain):
        assert linear.weight.is_contiguous()
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


def test_set_weight_layout_is_in_place_and_idempotent() -> None:
    model, _ = twins(tie=False)
    weights = [m.weight for m in linears(model)]
    table = model.embedding.table.weight
    set_weight_layout(model, "output_major")
    set_weight_layout(model, "output_major")
    assert [m.weight for m in linears(model)] == weights  # same Parameter objects
    assert all(w.is_contiguous() for w in weights)
    set_weight_layout(model, "input_major")
    assert all(is_input_major(w) for w in weights)
    assert table.is_contiguous()  # an untied table stays row by row (fast lookups)
    up = model.stack.blocks[0].mlp.up.weight
    up.data = up.data.contiguous()
    assert weight_layout(model) == "mixed"
    with pytest.raises(ValueError, match=r"unknown weight layout .column.; choose one of"):
        set_weight_layout(model, "column")


def test_a_decoder_is_built_in_pytorch_layout_unless_asked() -> None:
    model, plain = twins()
    assert weight_layout(plain) == "output_major"  # build_decoder_lm: training's layout
    fast = DecoderLM(embedding=copy.deepcopy(model.embedding), positions=model.positions,
                     stack=copy.deepcopy(plain.stack), dim=model.head.in_features,
                     vocab_size=VOCAB, weight_layout="input_major")
    assert weight_layout(fast) == "input_major"
    assert fast.head.weight is fast.embedding.table.weight


@pytest.mark.parametrize("tie", [True, False])
def test_forward_and_tokens_match_the_output_major_model(tie: bool) -> None:
    model, plain = twins(tie=tie)
    tokens = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # products of many rows: the same GEMM either way; a single row goes through another
        # matrix-vector kernel (sums in another order), hence a float32 tolerance
        torch.testing.assert_close(model(tokens), plain(tokens), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(tokens[:1, :1]), plain(tokens[:1, :1]),
                                   rtol=1e-5, atol=1e-5)
    new = model.generate(tokens, max_new_tokens=12)
    assert torch.equal(new, plain.generate(tokens, max_new_tokens=12))
    assert len(set(new[:, 9:].flatten().tolist())) > 3  # not a degenerate constant stream


def test_embedding_lookup_from_an_input_major_table() -> None:
    model, plain = twins()
    tokens = torch.randint(0, VOCAB, (4, 7), generator=torch.Generator().manual_seed(2))
    ours, theirs = model.embedding(tokens), plain.embedding(tokens)
    assert torch.equal(ours, theirs) and ours.is_contiguous()
    grad = torch.randn_like(ours)
    ours.backward(grad)
    theirs.backward(grad)
    table = model.embedding.table.weight
    assert table.grad is not None and plain.embedding.table.weight.grad is not None
    assert table.grad.stride() == table.stride()  # lands in the table's layout: no copy
    torch.testing.assert_close(table.grad, plain.embedding.table.weight.grad)


def test_a_training_step_matches_the_output_major_model() -> None:
    model, plain = twins(dtype=torch.float64)
    tokens = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(3))
    for m in (model, plain):
        m.train()
        optimizer = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            logits = m(tokens[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for (name, a), b in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert b.grad is not None and a.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
        assert a.grad.stride() == a.stride(), name  # gradients come in the weights' layout
    # AdamW's state follows the parameters' layout, and training keeps the layout
    adam = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(tokens).sum().backward()
    adam.step()
    assert weight_layout(model) == "input_major"
    state = adam.state[model.head.weight]
    assert state["exp_avg"].stride() == model.head.weight.stride()


def test_checkpoints_are_contiguous_and_the_same_file(tmp_path: Path) -> None:
    model, plain = twins()
    ckpt.save_weights(model, tmp_path / "ours.safetensors")
    save_model(plain, str(tmp_path / "safetensors.safetensors"))  # the format before
    ours = (tmp_path / "ours.safetensors").read_bytes()
    assert ours == (tmp_path / "safetensors.safetensors").read_bytes()
    stored = load_file(str(tmp_path / "ours.safetensors"))
    assert "head.weight" not in stored  # the tied copy is stored once
    assert all(t.is_contiguous() for t in stored.values())
    # Loading keeps the layout the model chose, from either writer.
    for name in ("ours", "safetensors"):
        fresh, _ = twins()
        with torch.no_grad():
            for p in fresh.parameters():
                p.zero_()
        ckpt.load_weights(fresh, tmp_path / f"{name}.safetensors", verify=name == "ours")
        assert weight_layout(fresh) == "input_major"
        for a, b in zip(fresh.parameters(), model.parameters(), strict=True):
            assert torch.equal(a, b)


def test_an_untied_model_round_trips(tmp_path: Path) -> None:
    model, _ = twins(tie=False)
    ckpt.save_weights(model, tmp_path / "w.safetensors")
    assert "head.weight" in load_file(str(tmp_path / "w.safetensors"))
    fresh, _ = twins(tie=False)
    with torch.no_grad():
        fresh.head.weight.zero_()
    ckpt.load_weights(fresh, tmp_path / "w.safetensors")
    assert torch.equal(fresh.head.weight, model.head.weight)
    assert is_input_major(fresh.head.weight)
