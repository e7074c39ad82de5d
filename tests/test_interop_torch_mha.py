"""torch.nn.MultiheadAttention <-> attnkit MultiHeadAttention: same outputs, both directions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from attnkit import masks
from attnkit.interop import from_torch_mha, mask_from_torch, to_torch_mha
from attnkit.layers.multihead import MultiHeadAttention

EXACT = {"atol": 1e-6, "rtol": 1e-6}


@st.composite
def torch_configs(draw: st.DrawFn) -> dict:
    heads = draw(st.integers(1, 4))
    head_dim = draw(st.integers(1, 5))
    same_context = draw(st.booleans())  # kdim == vdim == embed_dim: packed in_proj_weight
    context_dim = None if same_context else draw(st.integers(1, 9))
    return {"embed_dim": heads * head_dim, "num_heads": heads, "bias": draw(st.booleans()),
            "kdim": context_dim, "vdim": context_dim, "batch_first": draw(st.booleans())}


def _torch_call(module: nn.MultiheadAttention, x: Tensor, c: Tensor, **kw: object) -> Tensor:
    """module(x, c, c) on batch-first tensors, whatever module.batch_first is."""
    if not module.batch_first:
        x, c = x.transpose(0, 1), c.transpose(0, 1)
    out = module(x, c, c, need_weights=False, **kw)[0]
    return out if module.batch_first else out.transpose(0, 1)


def _random_lengths(batch: int, length: int, g: torch.Generator) -> Tensor:
    return torch.randint(1, length + 1, (batch,), generator=g)  # >= 1: no fully masked row


@given(config=torch_configs(), batch=st.integers(1, 3), lq=st.integers(1, 6),
       lk=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_from_torch_equals_torch(config: dict, batch: int, lq: int, lk: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module = nn.MultiheadAttention(**config, dtype=torch.float64).eval()
    if config["bias"]:  # torch starts biases at zero: make them count
        nn.init.normal_(module.in_proj_bias)
        nn.init.normal_(module.out_proj.bias)
    assert module._qkv_same_embed_dim == (config["kdim"] in (None, config["embed_dim"]))
    layer = from_torch_mha(module).eval()
    e, ek = config["embed_dim"], config["kdim"] or config["embed_dim"]
    x = torch.randn(batch, lq, e, generator=g, dtype=torch.float64)
    c = torch.randn(batch, lk, ek, generator=g, dtype=torch.float64)
    torch.testing.assert_close(layer(x, c), _torch_call(module, x, c), **EXACT)
    # key padding: torch True = pad; attnkit True = real key
    lengths = _random_lengths(batch, lk, g)
    pad = torch.arange(lk)[None, :] >= lengths[:, None]
    torch.testing.assert_close(layer(x, c, mask=mask_from_torch(key_padding_mask=pad)),
                               _torch_call(module, x, c, key_padding_mask=pad), **EXACT)
    # causal self-attention (inputs of width E only)
    if ek == e:
        causal = nn.Transformer.generate_square_subsequent_mask(lq, dtype=torch.float64)
        torch.testing.assert_close(layer(x, mask=masks.causal()),
                                   _torch_call(module, x, x, attn_mask=causal), **EXACT)
    # and back: the round trip gives torch's own module
    back = to_torch_mha(layer, batch_first=config["batch_first"]).eval()
    torch.testing.assert_close(_torch_call(back, x, c), _torch_call(module, x, c), **EXACT)
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, atol=0, rtol=0)


@given(heads=st.integers(1, 4), groups=st.sampled_from([1, 2, 4]), head_dim=st.integers(1, 4),
       context_dim=st.none() | st.integers(1, 7), bias=st.booleans(),
       batch_first=st.booleans(), seed=st.integers(0, 2**16))
def test_to_torch_equals_attnkit(heads: int, groups: int, head_dim: int,
                                 context_dim: int | None, bias: bool, batch_first: bool,
                                 seed: int) -> None:
    """GQA layers convert too: key/value head weights are repeated for their query heads."""
    torch.manual_seed(seed)
    q_heads = heads * groups
    dim = q_heads * head_dim
    layer = MultiHeadAttention(dim, q_heads, num_kv_heads=heads, context_dim=context_dim,
                               bias=bias).double().eval()
    module = to_torch_mha(layer, batch_first=batch_first).eval()
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    c = torch.randn(2, 4, context_dim or dim, dtype=torch.float64)
    torch.testing.assert_close(_torch_call(module, x, c), layer(x, c), **EXACT)
    pad = torch.tensor([[False] * 4, [False, False, True, True]])
    torch.testing.assert_close(_torch_call(module, x, c, key_padding_mask=pad),
                               layer(x, c, mask=masks.padding(torch.tensor([4, 2]))), **EXACT)


def test_gradients_flow_through_converted_layer() -> None:
    module = nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    layer = from_torch_mha(module)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    layer(x).square().sum().backward()
    module(x, x, x, need_weights=False)[0].square().sum().backward()
    torch.testing.assert_close(layer.out_proj.weight.grad, module.out_proj.weight.grad, **EXACT)
    torch.testing.assert_close(torch.cat([layer.q_proj.weight.grad, layer.k_proj.weight.grad,
                                          layer.v_proj.weight.grad]),
                               module.in_proj_weight.grad, **EXACT)


def test_dropout_and_training_mode_carry_over() -> None:
    module = nn.MultiheadAttention(8, 2, dropout=0.25)
    layer = from_torch_mha(module)
    assert layer.dropout == 0.25 and layer.training
    assert to_torch_mha(layer.eval()).dropout == 0.25
    assert not to_torch_mha(layer).training


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"add_bias_kv": True}, "add_bias_kv=True"),
    ({"add_zero_attn": True}, "add_zero_attn=True"),
    ({"kdim": 3, "vdim": 5}, "kdim=3 != vdim=5"),
])
def test_from_torch_refuses_what_attnkit_does_not_model(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_torch_mha(nn.MultiheadAttention(8, 2, **kwargs))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"qk_norm": True}, "no qk_norm"),
    ({"rope": True}, "no rope"),
    ({"alibi": True}, "no alibi"),
    ({"softcap": 30.0}, "no softcap"),
    ({"head_dim": 3}, "num_heads \\* head_dim == dim"),
])
def test_to_torch_refuses_what_torch_cannot_express(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_torch_mha(MultiHeadAttention(8, 2, **kwargs))


def test_mask_from_torch_conventions() -> None:
    pad = torch.tensor([[False, False, True]])
    float_pad = torch.tensor([[0.0, 0.0, float("-inf")]])
    for kpm in (pad, float_pad):
        got = mask_from_torch(key_padding_mask=kpm)
        assert got is not None
        assert got.dense(2, 3).expand(1, 1, 2, 3).tolist() == [[[[True, True, False]] * 2]]
    both = mask_from_torch(key_padding_mask=pad, is_causal=True)
    assert both is not None
    assert both.dense(3, 3)[0, 0].tolist() == [[True, False, False], [True, True, False],
                                               [True, True, False]]
    assert mask_from_torch() is None
    with pytest.raises(ValueError, match="additive float scores"):
        mask_from_torch(attn_mask=torch.tensor([[0.5, 0.0]]))
