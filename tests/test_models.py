"""Model families: shapes, forward/backward, padding invariance, per-layer attention kinds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attnkit.layers import list_attention_kinds
from attnkit.models import (
    ModelConfig,
    build_audio_transformer,
    build_decoder_lm,
    build_encoder_classifier,
    build_seq2seq,
    build_vit,
    get_preset,
)
from attnkit.models.blocks import TransformerBlock
from attnkit.models.presets import PRESETS


def tiny(**changes: object) -> ModelConfig:
    return dataclasses.replace(get_preset("tiny"), **changes)  # type: ignore[arg-type]


def _backward_reaches_every_parameter(model: torch.nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("mlp,norm", [("gelu", "layernorm"), ("swiglu", "rmsnorm")])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_vit_shapes_and_backward(norm_first: bool, mlp: str, norm: str, pooling: str) -> None:
    torch.manual_seed(0)
    config = tiny(norm_first=norm_first, mlp=mlp, norm=norm, pooling=pooling, num_layers=2,
                  dropout=0.1)
    model = build_vit(config, image_shape=(3, 8, 12), num_classes=5)
    x = torch.randn(4, 3, 8, 12)
    logits = model(x)
    assert logits.shape == (4, 5)
    _backward_reaches_every_parameter(model, logits.square().mean())
    swiglu = any(type(m).__name__ == "SwiGLU" for m in model.modules())
    assert swiglu == (mlp == "swiglu")
    assert isinstance(model.stack.final_norm, torch.nn.Identity) == (not norm_first)


def test_vit_rejects_indivisible_patches() -> None:
    with pytest.raises(ValueError, match="patch_size=3"):
        build_vit(tiny(patch_size=3), image_shape=(1, 8, 8), num_classes=10)


@pytest.mark.parametrize("patch_size,side,tokens", [(7, 28, 16), (4, 28, 49), (2, 8, 16)])
def test_vit_conv_stem_token_grid_and_backward(patch_size: int, side: int, tokens: int) -> None:
    """The conv stem gives the patch grid of 2^ceil(log2 P) (rounded up) and trains."""
    from attnkit.models.vit import ConvStem

    model = build_vit(tiny(patch_size=patch_size, patch_stem="conv", pooling="mean"),
                      image_shape=(1, side, side), num_classes=3)
    assert isinstance(model.embed, ConvStem)
    x = torch.randn(2, 1, side, side)
    assert model.embed(x)[0].shape == (2, tokens, 32)
    _backward_reaches_every_parameter(model, model(x).square().mean())
    # Tokens see overlapping neighbourhoods: one pixel moves more than one token.
    with torch.no_grad():
        bumped = x.clone()
        bumped[:, :, side // 2 + 1, side // 2 + 1] += 1.0  # on a stride-2 window edge
        moved = (model.embed(bumped)[0] - model.embed(x)[0]).abs().sum(-1) > 0  # (B, N)
    assert int(moved[0].sum()) > 1
    with pytest.raises(ValueError, match="patch_stem"):
        build_vit(tiny(patch_size=4, patch_stem="pixels"), image_shape=(1, 8, 8), num_classes=3)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_encoder_classifier_ignores_padding(pooling: str) -> None:
    torch.manual_seed(0)
    model = build_encoder_classifier(tiny(pooling=pooling, num_layers=2), vocab_size=20,
                                     num_classes=3).eval()
    tokens = torch.randint(1, 20, (2, 6))
    padded = torch.cat([tokens, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded), model(tokens), rtol=1e-5, atol=1e-5)
    # Explicit lengths mean the same thing as pad ids.
    torch.testing.assert_close(model(padded, torch.tensor([6, 6])), model(tokens),
                               rtol=1e-5, atol=1e-5)


def test_audio_transformer_masks_padded_frames() -> None:
    torch.manual_seed(0)
    model = build_audio_transformer(tiny(pooling="mean"), features=13, num_classes=4).eval()
    frames = torch.randn(1, 7, 13)
    padded = torch.cat([frames, torch.randn(1, 5, 13)], dim=1)  # junk, not zeros, after the end
    out = model(padded, torch.tensor([7]))
    assert out.shape == (1, 4)
    torch.testing.assert_close(out, model(frames), rtol=1e-5, atol=1e-5)
    model.train()
    _backward_reaches_every_parameter(model, model(padded, torch.tensor([7])).sum())


def test_decoder_lm_is_causal_and_trains() -> None:
    torch.manual_seed(0)
    model = build_decoder_lm(tiny(num_layers=2), vocab_size=30).eval()
    tokens = torch.randint(0, 30, (2, 9))
    logits = model(tokens)
    assert logits.shape == (2, 9, 30)
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 30
    # Positions before the change cannot see it.
    torch.testing.assert_close(model(changed)[:, :5], logits[:, :5])
    assert model.head.weight is model.embedding.table.weight  # tied
    model.train()
    _backward_reaches_every_parameter(model, model(tokens).logsumexp(-1).mean())


@pytest.mark.parametrize("positional,norm_first",
                         [("learned", True), ("sinusoidal", False), ("rope", True)])
def test_generation_with_kv_cache_equals_without(positional: str, norm_first: bool) -> None:
    torch.manual_seed(0)
    model = build_decoder_lm(tiny(num_layers=2, positional=positional, norm_first=norm_first),
                             vocab_size=25)
    prompt = torch.randint(0, 25, (3, 4))
    cached = model.generate(prompt, max_new_tokens=8, cache="static")
    uncached = model.generate(prompt, max_new_tokens=8, cache="none")
    assert cached.shape == (3, 12)
    assert torch.equal(cached[:, :4], prompt)
    assert torch.equal(cached, uncached)
    assert model.training  # generate restores the mode


def test_streaming_with_rolling_cache_matches_its_equivalent_mask() -> None:
    """Token-by-token decoding with a RollingKVCache gives the same logits as one full forward
    pass under the mask the cache reproduces (sinks + sliding window), far past the window."""
    torch.manual_seed(0)
    model = build_decoder_lm(tiny(num_layers=2, positional="rope"), vocab_size=25).eval()
    from attnkit.models.decoder import new_caches

    tokens = torch.randint(0, 25, (2, 12))
    caches = new_caches(model.stack, cache="rolling", max_length=0, window=4, sink=2)
    with torch.no_grad():
        stepwise = torch.cat([model(tokens[:, i:i + 1], caches=caches) for i in range(12)], 1)
        full = model(tokens, mask=caches[0].equivalent_mask())
    torch.testing.assert_close(stepwise, full, rtol=1e-4, atol=1e-5)
    out = model.generate(tokens[:, :3], max_new_tokens=10, cache="rolling", window=4, sink=2)
    assert out.shape == (2, 13)


def test_sampling_is_seeded_and_respects_top_k() -> None:
    torch.manual_seed(0)
    from attnkit.models import SamplingConfig

    model = build_decoder_lm(tiny(), vocab_size=25)
    prompt = torch.randint(0, 25, (2, 3))
    cfg = SamplingConfig(temperature=1.5, top_k=1)  # top-1 sampling is greedy
    sampled = model.generate(prompt, max_new_tokens=5, sampling=cfg,
                             generator=torch.Generator().manual_seed(1))
    assert torch.equal(sampled, model.generate(prompt, max_new_tokens=5))
    cfg = SamplingConfig(temperature=1.0, top_p=0.9)
    a = model.generate(prompt, max_new_tokens=5, sampling=cfg,
                       generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, max_new_tokens=5, sampling=cfg,
                       generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_filter_logits_matches_plain_definition() -> None:
    from attnkit.models.generation import filter_logits

    torch.manual_seed(0)
    logits = torch.randn(4, 11, dtype=torch.float64)
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))
    probs = torch.softmax(logits, -1)
    for row in range(4):
        order = probs[row].argsort(descending=True).tolist()
        expect, mass = set(), 0.0
        for i in order:  # smallest prefix of the sorted tokens whose mass reaches 0.7
            expect.add(i)
            mass += float(probs[row, i])
            if mass >= 0.7:
                break
        assert set(kept[row].nonzero().flatten().tolist()) == expect
    top3 = torch.isfinite(filter_logits(logits, top_k=3))
    assert torch.equal(top3, torch.zeros_like(top3).scatter(-1, logits.topk(3).indices, True))
    with pytest.raises(ValueError, match="top_p"):
        from attnkit.models import SamplingConfig

        SamplingConfig(top_p=1.5)


def test_seq2seq_shapes_cross_attention_and_cached_greedy() -> None:
    torch.manual_seed(0)
    model = build_seq2seq(tiny(num_layers=2, num_decoder_layers=1), source_vocab_size=30,
                          target_vocab_size=40)
    source = torch.randint(3, 30, (2, 7))
    source[1, 5:] = 0  # padding
    target_in = torch.randint(3, 40, (2, 6))
    logits = model(source, target_in)
    assert logits.shape == (2, 6, 40)
    assert len(model.decoder.blocks) == 1
    assert all(b.cross_attention is not None for b in model.decoder.blocks)
    _backward_reaches_every_parameter(model, logits.logsumexp(-1).mean())
    # Padded source tokens do not change the output.
    model.eval()
    altered = source.clone()
    with torch.no_grad():
        a = model(source, target_in)
        altered[1, 5:] = 0
        trimmed = model(source[1:, :5], target_in[1:])
    torch.testing.assert_close(a[1:], trimmed, rtol=1e-5, atol=1e-5)
    cached = model.greedy_decode(source, bos_id=1, eos_id=2, max_length=6)
    uncached = model.greedy_decode(source, bos_id=1, eos_id=2, max_length=6, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, 0], torch.ones(2, dtype=torch.long))


def test_attention_kind_per_layer() -> None:
    model = build_vit(tiny(num_layers=2, attention=["mha", "mha"]), image_shape=(1, 8, 8),
                      num_classes=3)
    assert len(model.stack.blocks) == 2
    with pytest.raises(ValueError, match="one kind or one per layer"):
        build_vit(tiny(num_layers=3, attention=["mha", "mha"]), image_shape=(1, 8, 8),
                  num_classes=3)
    with pytest.raises(ValueError, match="unknown attention kind"):
        build_vit(tiny(attention="no-such-kind"), image_shape=(1, 8, 8), num_classes=3)


@pytest.mark.parametrize("kind", sorted(list_attention_kinds()))
def test_every_registered_attention_kind_plugs_into_a_model(kind: str) -> None:
    """The grid over the registry: each kind trains inside an encoder classifier."""
    torch.manual_seed(0)
    model = build_vit(tiny(attention=kind, num_layers=2), image_shape=(1, 8, 8), num_classes=3)
    logits = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_block_rejects_half_a_cross_attention() -> None:
    from attnkit.layers import build_attention

    with pytest.raises(ValueError, match="together"):
        TransformerBlock(attention=build_attention("mha", dim=8, num_heads=2),
                         mlp=torch.nn.Identity(), attention_norm=torch.nn.Identity(),
                         mlp_norm=torch.nn.Identity(),
                         cross_attention=build_attention("mha", dim=8, num_heads=2))


def test_presets() -> None:
    base = get_preset("classic_base")
    assert (base.d_model, base.num_heads, base.d_ff, base.num_layers, base.dropout) == \
        (512, 8, 2048, 6, 0.1)
    assert not base.norm_first  # the 2017 original is post-norm
    model = build_seq2seq(base, source_vocab_size=100, target_vocab_size=100)
    assert len(model.encoder.blocks) == 6 and len(model.decoder.blocks) == 6
    for name in PRESETS:
        cfg = get_preset(name)
        assert cfg.d_model % cfg.num_heads == 0, name
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("nope")
