"""Weight-decay groups come from module types: per model family, exactly the weights of linear
and convolution layers decay; embeddings (token tables, learned positions, class tokens), norms,
biases and per-head scalars do not."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from attnkit.models import FAMILIES, ModelConfig, build_model, get_preset
from attnkit.tasks.base import Task
from attnkit.train.config import resolve_config
from attnkit.train.optim import build_optimizer, weight_decay_groups


def _task(family: str) -> Task:
    kind = FAMILIES[family][0]
    data = [(torch.zeros(1), torch.zeros(1))]
    common = {"train": data, "val": data, "test": data, "metric": "accuracy"}
    if family == "vit":
        return Task(name="t", kind=kind, modality="image", input_shape=(1, 8, 8),
                    num_classes=3, **common)
    if family == "audio":
        return Task(name="t", kind=kind, modality="audio", input_shape=(20, 6), num_classes=3,
                    **common)
    if family == "encoder":
        return Task(name="t", kind=kind, modality="tokens", vocab_size=13, num_classes=3,
                    **common)
    return Task(name="t", kind=kind, modality="text", vocab_size=13, **common)


def _expected(model: nn.Module) -> set[str]:
    """Independent of the implementation: the decayed names, found by walking the modules."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d) \
                and id(module.weight) not in tables:
            names.add(f"{module_name}.weight")
    return names


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_decays_only_linear_and_conv_weights(family: str, pooling: str) -> None:
    config = replace(get_preset("tiny"), family=family, pooling=pooling,  # type: ignore[arg-type]
                     num_layers=2, attention=["mha", "gated"], norm="rmsnorm")
    model = build_model(config, _task(family))
    decayed, kept = weight_decay_groups(model)
    params = dict(model.named_parameters())
    assert set(decayed) | set(kept) == set(params) and not set(decayed) & set(kept)
    assert set(decayed) & set(params) == _expected(model) & set(params)
    for name in kept:
        assert not name.endswith(("proj.weight", "up.weight", "down.weight")), name
    for name in decayed:
        assert params[name].dim() >= 2 and "norm" not in name and not name.endswith("bias")
    # token tables, learned position tables and the class token
    embeddings = [n for n in params if n.endswith(("table", "table.weight", "cls_token"))]
    if family in ("encoder", "decoder", "seq2seq") or pooling == "cls":
        assert embeddings
    assert not set(embeddings) & set(decayed), embeddings


def test_tied_embedding_is_not_decayed() -> None:
    config = replace(get_preset("tiny"), family="decoder", tie_embeddings=True)
    model = build_model(config, _task("decoder"))
    decayed, kept = weight_decay_groups(model)
    table = next(m.weight for m in model.modules() if isinstance(m, nn.Embedding))
    params = dict(model.named_parameters())
    assert all(params[n] is not table for n in decayed)
    assert any(params[n] is table for n in kept)


def test_encoder_token_table_is_not_decayed() -> None:
    """The case the old name rule missed: embed.tokens.table.weight."""
    model = build_model(replace(get_preset("tiny"), family="encoder"), _task("encoder"))
    decayed, _ = weight_decay_groups(model)
    assert not [n for n in decayed if "table" in n]


def test_optimizer_groups_use_the_configured_decay() -> None:
    model = build_model(ModelConfig(family="vit", d_model=16, num_heads=2, num_layers=1,
                                    d_ff=32), _task("vit"))
    config = resolve_config({"preset": "tiny", "train": {"weight_decay": 0.3}}, family="vit")
    optimizer = build_optimizer(model, config)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
