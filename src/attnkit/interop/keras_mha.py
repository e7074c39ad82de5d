"""Weights both ways between attnkit's MultiHeadAttention and ``keras.layers.MultiHeadAttention``.

Keras 3, any backend (the weights travel as NumPy arrays). keras is imported only when a
converter runs: ``pip install 'attnkit[keras]'``, and pick the backend with ``KERAS_BACKEND``
before keras is first imported.

Shape legend: E query width (attnkit ``dim``), C key/value input width (``context_dim``),
H heads, Dh head width (Keras ``key_dim``; may differ from E / H).

Keras keeps each projection as an ``EinsumDense`` with a per-head kernel; attnkit keeps
``nn.Linear`` layers whose output rows are heads-major (row ``h * Dh + d``), so each converts
with a reshape and a transpose::

    query kernel (E, H, Dh),  bias (H, Dh)   <->  q_proj.weight (H*Dh, E),  bias (H*Dh,)
    key   kernel (C, H, Dh),  bias (H, Dh)   <->  k_proj.weight (H*Dh, C)
    value kernel (C, H, Dh),  bias (H, Dh)   <->  v_proj.weight (H*Dh, C)
    output kernel (H, Dh, E), bias (E,)      <->  out_proj.weight (E, H*Dh), bias (E,)

and ``keras_mha(x, c, attention_mask=m)`` equals ``layer(x, c, mask=mask_from_keras(m))``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnkit.functional import masks
from attnkit.functional.masks import Mask
from attnkit.interop.plain import check_plain, repeat_kv_heads
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["from_keras_mha", "mask_from_keras", "to_keras_mha"]

KERAS_INSTALL = "pip install 'attnkit[keras]'"
TARGET = "keras.layers.MultiHeadAttention"


def _keras() -> Any:
    try:
        import keras
    except ImportError as err:
        raise ImportError(f"the Keras converters need Keras 3: {KERAS_INSTALL}") from err
    if not keras.__version__.startswith("3."):
        raise ImportError(f"the Keras converters need Keras 3, found keras {keras.__version__}: "
                          f"{KERAS_INSTALL}")
    return keras


def _refuse_unsupported_keras(layer: Any) -> None:
    if not layer.built:
        raise ValueError(f"the Keras layer {layer.name!r} has no weights yet; call it once or "
                         f"build it with layer.build(query_shape, value_shape)")
    reasons = []
    if layer.value_dim != layer.key_dim:
        reasons.append(f"value_dim={layer.value_dim} != key_dim={layer.key_dim} (attnkit's "
                       f"MultiHeadAttention has one head_dim)")
    if layer.query_dense.kernel.shape[0] != layer.output_dense.kernel.shape[-1] or len(
            layer.output_dense.kernel.shape) != 3:
        reasons.append(f"output_shape={layer._output_shape} differs from the query width "
                       f"(attnkit projects back to dim)")
    if layer.attention_axes not in (None, (1,), [1]):
        reasons.append(f"attention_axes={layer.attention_axes} (attnkit attends over the "
                       f"sequence axis of (B, L, E) inputs)")
    if len(layer.query_dense.kernel.shape) != 3:
        reasons.append("inputs of rank other than 3 (attnkit takes (B, L, E))")
    if layer.key_dense.kernel.shape[0] != layer.value_dense.kernel.shape[0]:
        reasons.append(f"key width {layer.key_dense.kernel.shape[0]} != value width "
                       f"{layer.value_dense.kernel.shape[0]} (attnkit projects keys and values "
                       f"from one context tensor)")
    if getattr(layer, "_use_gate", False):
        reasons.append("use_gate=True (a sigmoid output gate; attnkit's kind 'gated' gates "
                       "differently)")
    if getattr(layer, "_sliding_window", None) is not None:
        reasons.append(f"sliding_window={layer._sliding_window} (in attnkit the window is a "
                       f"mask given at call time: masks.sliding_window(w - 1, w - 1); convert a "
                       f"layer built without it)")
    if reasons:
        raise ValueError(f"cannot convert {TARGET} {layer.name!r}: " + "; ".join(reasons))


def _numpy(variable: Any) -> np.ndarray:
    return np.asarray(_keras().ops.convert_to_numpy(variable))


@torch.no_grad()
def from_keras_mha(layer: Any, *, backend: str = "auto") -> MultiHeadAttention:
    """attnkit layer with the weights of a built ``keras.layers.MultiHeadAttention``.

    Same dtype as the Keras weights; on CPU. ``layer(x, c)`` is the Keras ``layer(x, c)``
    (query ``x``, value = key = ``c``); self-attention is ``layer(x)``. Dropout carries over.
    Raises ValueError for what attnkit's layer does not model (value_dim != key_dim, another
    output_shape or attention_axes, different key/value widths, use_gate, sliding_window).
    """
    keras = _keras()
    if not isinstance(layer, keras.layers.MultiHeadAttention):
        raise TypeError(f"expected {TARGET}, got {type(layer).__name__}")
    _refuse_unsupported_keras(layer)
    query_kernel = _numpy(layer.query_dense.kernel)  # (E, H, Dh)
    dim, heads, head_dim = query_kernel.shape
    context_dim = layer.key_dense.kernel.shape[0]
    use_bias = layer.query_dense.bias is not None
    dtype = torch.from_numpy(query_kernel[:0]).dtype
    out = MultiHeadAttention(dim, heads, head_dim=head_dim, context_dim=context_dim,
                             bias=use_bias, dropout=float(layer.dropout), backend=backend)
    out.to(dtype=dtype)
    for linear, dense in ((out.q_proj, layer.query_dense), (out.k_proj, layer.key_dense),
                          (out.v_proj, layer.value_dense)):
        kernel = _numpy(dense.kernel)  # (in, H, Dh)
        linear.weight.copy_(torch.from_numpy(kernel.reshape(kernel.shape[0], -1).T.copy()))
        if use_bias:
            linear.bias.copy_(torch.from_numpy(_numpy(dense.bias).reshape(-1)))
    output_kernel = _numpy(layer.output_dense.kernel)  # (H, Dh, E)
    out.out_proj.weight.copy_(torch.from_numpy(output_kernel.reshape(-1, dim).T.copy()))
    if use_bias:
        out.out_proj.bias.copy_(torch.from_numpy(_numpy(layer.output_dense.bias)))
    return out.eval()


def _as_numpy(weight: Tensor, shape: tuple[int, ...]) -> np.ndarray:
    return weight.detach().cpu().numpy().reshape(shape)


def to_keras_mha(layer: MultiHeadAttention, **keras_kwargs: Any) -> Any:
    """A built ``keras.layers.MultiHeadAttention`` with the weights of ``layer``.

    Uses whatever Keras backend is active; the Keras layer's dtype is the layer's (override
    with ``dtype=...`` in ``keras_kwargs``, which go to the Keras constructor, e.g. ``name``).
    GQA layers convert exactly by repeating key/value heads. Raises ValueError for what Keras's
    layer cannot express (qk_norm, RoPE, ALiBi, softcap, subclasses with other math).
    """
    keras = _keras()
    check_plain(layer, TARGET)
    lay = layer.layout
    context_dim = layer.k_proj.in_features
    use_bias = layer.q_proj.bias is not None
    dtype_name = str(layer.q_proj.weight.dtype).removeprefix("torch.")
    options = {"dtype": dtype_name, **keras_kwargs}
    converted = keras.layers.MultiHeadAttention(num_heads=lay.num_heads, key_dim=lay.head_dim,
                                                use_bias=use_bias, dropout=layer.dropout,
                                                **options)
    converted.build((None, None, lay.dim), (None, None, context_dim))
    heads, head_dim = lay.num_heads, lay.head_dim
    with torch.no_grad():
        projections = ((converted.query_dense, layer.q_proj.weight, layer.q_proj.bias),
                       (converted.key_dense, repeat_kv_heads(layer.k_proj.weight, layer),
                        None if layer.k_proj.bias is None
                        else repeat_kv_heads(layer.k_proj.bias, layer)),
                       (converted.value_dense, repeat_kv_heads(layer.v_proj.weight, layer),
                        None if layer.v_proj.bias is None
                        else repeat_kv_heads(layer.v_proj.bias, layer)))
        for dense, weight, bias in projections:
            dense.kernel.assign(_as_numpy(weight.T, (weight.shape[1], heads, head_dim)))
            if bias is not None:
                dense.bias.assign(_as_numpy(bias, (heads, head_dim)))
        converted.output_dense.kernel.assign(
            _as_numpy(layer.out_proj.weight.T, (heads, head_dim, lay.dim)))
        if layer.out_proj.bias is not None:
            converted.output_dense.bias.assign(_as_numpy(layer.out_proj.bias, (lay.dim,)))
    return converted


def mask_from_keras(*, attention_mask: Any = None, use_causal_mask: bool = False
                    ) -> Mask | None:
    """attnkit mask from Keras's call arguments.

    ``attention_mask`` (B, T, S): True (or 1) = may attend, the same convention as attnkit's;
    ``use_causal_mask``: the causal mask, top-left aligned as Keras builds it (query i sees keys
    j <= i, also when T != S).
    """
    parts: list[Mask] = []
    if attention_mask is not None:
        allowed = torch.as_tensor(np.asarray(_keras().ops.convert_to_numpy(attention_mask)))
        if allowed.dim() != 3:
            raise ValueError(f"attention_mask must be (B, T, S), got shape "
                             f"{tuple(allowed.shape)}")
        parts.append(masks.dense(allowed.bool()[:, None]))
    if use_causal_mask:
        parts.append(masks.causal(offset=0))  # top-left aligned, as in torch and Keras
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else parts[0] & parts[1]
