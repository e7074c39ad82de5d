"""attnkit.hf.swap_attention: any attnkit kind in a pretrained model, projections kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("transformers", reason="pip install 'attnkit[hf]'")

import attnkit.hf
from attnkit.explain import capture
from attnkit.hf.swap import SwappedAttention
from attnkit.layers import list_attention_kinds
from hf_tiny_models import ARCHITECTURES, BY_NAME, TinyArchitecture

TOLERANCE = 1e-5


def logits_of(model: nn.Module, inputs: dict[str, Tensor], real: Tensor) -> Tensor:
    with torch.no_grad():
        logits = model(**inputs).logits
    return logits[real] if logits.dim() == 3 else logits


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: a.name)
def test_exact_kinds_reproduce_the_pretrained_model(arch: TinyArchitecture,
                                                    tmp_path: Path) -> None:
    """'mha', and 'local' with a window wider than the input, are the original attention: the
    kept projections, positions, masks and cache give the same logits and greedy tokens."""
    folder = arch.save(tmp_path)
    inputs, real = arch.batch()
    original = arch.load(folder, "eager")
    want = logits_of(original, inputs, real)
    for kind, options in (("mha", {}), ("local", {"window": 64})):
        model = arch.load(folder, "eager")
        report = attnkit.hf.swap_attention(model, kind, **options)
        assert len(report.layers) == 2 and report.new == []
        assert sum(isinstance(m, SwappedAttention) for m in model.modules()) == 2
        diff = (logits_of(model, inputs, real) - want).abs().max().item()
        print(f"parity {arch.name} swapped to {kind}: max abs logit diff vs eager {diff:.1e}")
        assert diff <= TOLERANCE, f"{arch.name} with {kind}: {diff:.2e}"
        if arch.decoder:
            settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert torch.equal(model.generate(**inputs, **settings),
                               original.generate(**inputs, **settings))


@pytest.mark.parametrize("kind, options", [("local", {"window": 3}),
                                           ("differential", {})])
def test_gpt2_with_another_kind_trains_and_generates(kind: str, options: dict[str, int],
                                                     tmp_path: Path) -> None:
    arch = BY_NAME["gpt2"]
    folder = arch.save(tmp_path)
    inputs, real = arch.batch()
    original = logits_of(arch.load(folder, "eager"), inputs, real)
    model = arch.load(folder, "eager")
    report = attnkit.hf.swap_attention(model, kind, **options)
    assert "q_proj.weight" in report.kept and "out_proj.bias" in report.kept
    swapped = model.transformer.h[0].attn
    pretrained = arch.load(folder, "eager").transformer.h[0].attn
    q_weight = pretrained.c_attn.weight[:, :64].t()  # Conv1D (in, out) -> Linear (out, in)
    assert torch.equal(swapped.layer.q_proj.weight, q_weight)
    changed = (logits_of(model, inputs, real) - original).abs().max()
    assert changed > 1e-3  # a genuinely different attention

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model(**inputs, labels=inputs["input_ids"].masked_fill(~real, -100)).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "transformer.h.0.attn.layer.q_proj.weight" in moved
    for name in report.new:
        assert f"transformer.h.1.attn.layer.{name}" in moved

    model.eval()
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (3, inputs["input_ids"].shape[1] + 5)
    # Decoding with the KV cache equals re-running the whole sequence.
    again = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=0,
                           use_cache=False)
    assert torch.equal(out, again)


def test_differential_keeps_every_projection_and_says_what_is_new(tmp_path: Path) -> None:
    arch = BY_NAME["llama"]
    model = arch.load(arch.save(tmp_path), "eager")
    report = attnkit.hf.swap_attention(model, "differential")
    layer = model.model.layers[1].self_attn.layer
    assert layer.diff_heads == 2 and layer.layer_index == 1  # 4 heads -> 2 differential heads
    assert sorted(report.new) == ["head_norm.weight", "lambda_k1", "lambda_k2", "lambda_q1",
                                  "lambda_q2"]
    assert report.kept == ["q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"]
    assert "differential" in str(report) and "lambda_q1" in str(report)


def _train_step(arch: TinyArchitecture, folder: Path, kind: str) -> nn.Module:
    """Swap ``kind`` in, run forward + backward in training mode; returns the model."""
    model = arch.load(folder, "eager")
    inputs, real = arch.batch()
    options = {"max_length": 16} if kind == "linformer" else {}
    try:
        attnkit.hf.swap_attention(model, kind, **options)
    except ValueError as err:
        assert "dropout=0.0" in str(err), err  # the model's dropout the kind cannot do
        attnkit.hf.swap_attention(model, kind, dropout=0.0, **options)
    model.train()
    if arch.decoder:
        inputs = {**inputs, "labels": inputs["input_ids"].masked_fill(~real, -100)}
    else:
        inputs = {**inputs, "labels": torch.tensor([0, 1, 2])}
    try:
        loss = model(**inputs).loss
    except ValueError as err:  # kinds whose decoding state is not keys and values
        assert "use_cache=False" in str(err), err
        loss = model(**inputs, use_cache=False).loss
    loss.backward()
    assert torch.isfinite(loss)
    return model


@pytest.mark.parametrize("kind", sorted(list_attention_kinds()))
def test_every_kind_swaps_in_and_trains_or_says_why(kind: str, tmp_path: Path) -> None:
    """The kind grid: GPT-2 (causal), or BERT for kinds that say they cannot be causal."""
    gpt2 = BY_NAME["gpt2"]
    try:
        model = _train_step(gpt2, gpt2.save(tmp_path / "gpt2"), kind)
        layer = model.transformer.h[0].attn.layer
    except ValueError as err:
        assert "cannot be causal" in str(err), err
        bert = BY_NAME["bert"]
        model = _train_step(bert, bert.save(tmp_path / "bert"), kind)
        layer = model.bert.encoder.layer[0].attention.self.layer
    assert layer.q_proj.weight.grad is not None and layer.q_proj.weight.grad.abs().sum() > 0


def test_capture_records_a_swapped_kind(tmp_path: Path) -> None:
    arch = BY_NAME["gpt2"]
    model = arch.load(arch.save(tmp_path), "eager")
    attnkit.hf.swap_attention(model, "local", window=2)
    ids = torch.randint(3, 97, (1, 7))
    with torch.no_grad(), capture(model, layers=[0]) as cap:
        model(input_ids=ids)
    weights = cap.records[0].weights[0, 0]  # (7, 7)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril().triu(-2)  # causal, window 2
    assert torch.all(weights[~allowed] == 0) and torch.allclose(weights.sum(-1), torch.ones(7))


def test_unknown_modules_and_scalings_are_refused(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ValueError, match="no transformers self-attention modules"):
        attnkit.hf.swap_attention(nn.Sequential(nn.Linear(2, 2)), "local")
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50,
                        scale_attn_by_inverse_layer_idx=True)
    model = GPT2LMHeadModel(config)
    model.transformer.h[0].attn.scaling /= 2  # as for a deeper layer
    with pytest.raises(NotImplementedError, match=r"1/sqrt\(head_dim\)"):
        attnkit.hf.swap_attention(model, "local")
