"""keras.layers.MultiHeadAttention (Keras 3, torch backend here) <-> attnkit MultiHeadAttention.

Keras reads ``KERAS_BACKEND`` once, at its first import: this module sets the torch backend
unless keras is already loaded (then the converters use whichever backend that is: they move
weights as NumPy arrays).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras", minversion="3",
                            reason="Keras 3 is not installed: pip install 'attnkit[keras]'")

from attnkit import masks  # noqa: E402
from attnkit.interop import from_keras_mha, mask_from_keras, to_keras_mha  # noqa: E402
from attnkit.layers.multihead import MultiHeadAttention  # noqa: E402

EXACT = {"atol": 1e-6, "rtol": 1e-6}
# Keras's own noise: a softmax over one key (S = 1) and NumPy 2's copy keyword.
pytestmark = [pytest.mark.filterwarnings("ignore:You are using a softmax over axis:UserWarning"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]


def _keras_call(layer: object, x: torch.Tensor, c: torch.Tensor, *, fused: bool = False,
                **kw: object) -> torch.Tensor:
    """Keras's output for query x, value = key = c.

    By default through Keras's explicit einsum-softmax path (``return_attention_scores=True``
    selects it), which keeps float64. Its fused path (``fused=True``) calls
    ``keras.ops.dot_product_attention``, which on the torch backend returns float32 even for
    float64 inputs (Keras 3.15), so it can only be compared at float32 tolerance.
    """
    out = layer(x.numpy(), c.numpy(), return_attention_scores=not fused,  # type: ignore[operator]
                **kw)
    out = out if fused else out[0]
    return torch.as_tensor(np.asarray(keras.ops.convert_to_numpy(out))).to(x.dtype)


def _randomize(layer: object, seed: int) -> None:
    """Keras starts biases at zero: give every weight random values so each one counts."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:  # type: ignore[attr-defined]
        weight.assign(rng.standard_normal(tuple(weight.shape)))


@given(heads=st.integers(1, 4), key_dim=st.integers(1, 5), dim=st.integers(1, 9),
       context_dim=st.none() | st.integers(1, 9), use_bias=st.booleans(),
       batch=st.integers(1, 3), lq=st.integers(1, 6), lk=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_from_keras_equals_keras(heads: int, key_dim: int, dim: int, context_dim: int | None,
                                 use_bias: bool, batch: int, lq: int, lk: int, seed: int) -> None:
    """float64 on both sides (Keras allows it), so the two agree to rounding."""
    g = torch.Generator().manual_seed(seed)
    cdim = context_dim or dim
    original = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=key_dim,
                                               use_bias=use_bias, dtype="float64")
    original.build((None, None, dim), (None, None, cdim))
    _randomize(original, seed)
    layer = from_keras_mha(original)
    assert layer.q_proj.weight.dtype == torch.float64
    x = torch.randn(batch, lq, dim, generator=g, dtype=torch.float64)
    c = torch.randn(batch, lk, cdim, generator=g, dtype=torch.float64)
    torch.testing.assert_close(layer(x, c), _keras_call(original, x, c), **EXACT)
    # a (B, T, S) attention mask with at least one allowed key per row
    allowed = torch.rand(batch, lq, lk, generator=g) < 0.6
    allowed[..., 0] = True
    torch.testing.assert_close(layer(x, c, mask=mask_from_keras(attention_mask=allowed)),
                               _keras_call(original, x, c, attention_mask=allowed.numpy()),
                               **EXACT)
    torch.testing.assert_close(layer(x, c, mask=mask_from_keras(use_causal_mask=True)),
                               _keras_call(original, x, c, use_causal_mask=True), **EXACT)
    back = to_keras_mha(layer)
    for old, new in zip(original.weights, back.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(new),
                                      keras.ops.convert_to_numpy(old))


@given(kv_heads=st.integers(1, 3), groups=st.sampled_from([1, 2]), head_dim=st.integers(1, 4),
       dim=st.integers(2, 8), context_dim=st.none() | st.integers(1, 7), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_to_keras_equals_attnkit(kv_heads: int, groups: int, head_dim: int, dim: int,
                                 context_dim: int | None, bias: bool, seed: int) -> None:
    """Any head width (Keras's key_dim is free) and GQA (key/value heads repeated)."""
    torch.manual_seed(seed)
    heads = kv_heads * groups
    layer = MultiHeadAttention(dim, heads, num_kv_heads=kv_heads, head_dim=head_dim,
                               context_dim=context_dim, bias=bias).double().eval()
    converted = to_keras_mha(layer, name="converted")
    assert converted.name == "converted"
    x = torch.randn(2, 5, dim, dtype=torch.float64)
    c = torch.randn(2, 3, context_dim or dim, dtype=torch.float64)
    torch.testing.assert_close(_keras_call(converted, x, c), layer(x, c), **EXACT)
    pad = masks.padding(torch.tensor([3, 1]))
    keras_mask = (torch.arange(3)[None, None, :] < torch.tensor([3, 1])[:, None, None]
                  ).expand(2, 5, 3)
    torch.testing.assert_close(_keras_call(converted, x, c, attention_mask=keras_mask.numpy()),
                               layer(x, c, mask=pad), **EXACT)


def test_float32_keras_layer_converts_in_float32() -> None:
    original = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    x = torch.randn(2, 5, 6)
    expected = _keras_call(original, x, x, fused=True)
    layer = from_keras_mha(original)
    assert layer.q_proj.weight.dtype == torch.float32
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_keras_fused_path_agrees_at_float32_tolerance() -> None:
    """Keras's default (fused) path computes attention in float32 on the torch backend."""
    original = keras.layers.MultiHeadAttention(num_heads=3, key_dim=4, dtype="float64")
    original.build((None, None, 6), (None, None, 5))
    _randomize(original, 7)
    layer = from_keras_mha(original)
    x, c = torch.randn(2, 5, 6, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x, c), _keras_call(original, x, c, fused=True),
                               atol=1e-5, rtol=1e-5)


def test_dropout_carries_over() -> None:
    original = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.2)
    original.build((None, None, 8), (None, None, 8))
    assert from_keras_mha(original).dropout == pytest.approx(0.2)
    assert to_keras_mha(MultiHeadAttention(8, 2, dropout=0.3)).dropout == pytest.approx(0.3)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"value_dim": 3}, "value_dim=3 != key_dim=4"),
    ({"output_shape": 5}, "output_shape"),
    ({"use_gate": True}, "use_gate=True"),
    ({"sliding_window": 2}, "sliding_window=2"),
])
def test_from_keras_refuses_what_attnkit_does_not_model(kwargs: dict, message: str) -> None:
    original = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, **kwargs)
    original.build((None, None, 8), (None, None, 8))
    with pytest.raises(ValueError, match=message):
        from_keras_mha(original)


def test_from_keras_refuses_unbuilt_and_split_key_value_widths() -> None:
    with pytest.raises(ValueError, match="no weights yet"):
        from_keras_mha(keras.layers.MultiHeadAttention(num_heads=2, key_dim=4))
    split = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    split.build((None, None, 8), (None, None, 6), (None, None, 5))
    with pytest.raises(ValueError, match="key width 5 != value width 6"):
        from_keras_mha(split)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rope": True}, "has no rope"), ({"softcap": 20.0}, "has no softcap"),
])
def test_to_keras_refuses_what_keras_cannot_express(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_keras_mha(MultiHeadAttention(8, 2, **kwargs))
