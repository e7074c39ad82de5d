"""attnkit as an attention implementation of Hugging Face Transformers.

    import attnkit.hf
    attnkit.hf.register()                                   # once per process
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="attnkit")
    model.set_attn_implementation("attnkit")                # or switch a loaded model

Shape legend: B batch, Hq / Hkv query / key-value heads, Lq / Lk query / key lengths (cache
included), D head dim.

Two functions are registered under the name ``"attnkit"``:

- the *mask interface* (:func:`attnkit.hf.mask_translation.translate_mask`): transformers asks it
  for the mask of a forward pass and gets an attnkit mask (``causal() & padding(...)``,
  ``sliding_window(w)``, ...) instead of an ``Lq x Lk`` tensor;
- the *attention function* (:func:`attention_forward`): every attention module calls it with
  ``(B, Hq, Lq, D)`` queries, ``(B, Hkv, Lk, D)`` keys and values and that mask, and it runs
  :func:`attnkit.attention` with the module's scaling, softcap and dropout. GQA needs no
  ``repeat_kv``: the engine takes ``Hkv < Hq`` as it is.

The output passes through the module's :class:`~attnkit.layers.base.AttentionProbe` when
:mod:`attnkit.explain` capture attached one, so exact weights come out while the forward stays
on the fused backend.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor, nn

from attnkit import attention, bias, masks
from attnkit.functional.math import attention_weights, validate
from attnkit.hf.dependency import import_transformers
from attnkit.hf.mask_translation import translate_mask
from attnkit.layers.base import PROBE_ATTRIBUTE, AttentionProbe, register_probe_attacher

__all__ = ["IMPLEMENTATION", "attention_forward", "attentions_requested", "engine_inputs",
           "is_running_attnkit", "register"]

#: The ``attn_implementation`` name attnkit registers under.
IMPLEMENTATION = "attnkit"

# Keyword arguments of transformers' attention functions that attnkit cannot honour: a model
# passing them gets an error instead of silently different numbers.
_UNSUPPORTED = {
    "s_aux": "learned attention sinks (GPT-OSS) add a per-head logit to the softmax denominator",
    "sinks": "learned attention sinks add a per-head logit to the softmax denominator",
}


def engine_inputs(attention_mask: masks.Mask | Tensor | None, query: Tensor, key: Tensor, *,
                  is_causal: bool, position_bias: Tensor | None = None
                  ) -> tuple[masks.Mask | None, bias.Bias | None]:
    """What transformers hands an attention function -> attnkit's ``mask`` and ``bias``.

    Args:
        attention_mask: an attnkit mask (from the registered mask interface), None, or a 4-D
            tensor a caller built itself: boolean (True = attend) or additive float.
        query: (B, Hq, Lq, D); key: (B, Hkv, Lk, D).
        is_causal: the module's causality, used only when no mask was made (as ``sdpa`` does:
            causal from the top left while Lq > 1, nothing for a single decoded query).
        position_bias: (B|1, Hq|1, Lq, Lk) additive bias some models (T5-style) pass.
    """
    lq, lk = query.shape[2], key.shape[2]
    extra = None if position_bias is None else position_bias[..., :lk]
    if isinstance(attention_mask, masks.Mask):
        # A mask that allows every pair (an encoder batch without padding) is no mask: the
        # recomputed weights then take torch's fused softmax instead of a masked one.
        everything = attention_mask.band(lq, lk) == (None, None)
        mask: masks.Mask | None = None if everything else attention_mask
    elif attention_mask is None:
        mask = masks.causal(offset=0) if is_causal and lq > 1 else None
    elif attention_mask.dtype == torch.bool:
        mask = masks.dense(attention_mask[..., :lk])  # a caller's own 4-D mask
    else:  # additive float mask, as ``eager`` takes it
        mask = None
        additive = attention_mask[..., :lk].to(query.dtype)
        extra = additive if extra is None else extra + additive
    return mask, None if extra is None else bias.dense(extra)


def attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                      attention_mask: masks.Mask | Tensor | None, dropout: float = 0.0,
                      scaling: float | None = None, softcap: float | None = None,
                      is_causal: bool | None = None, position_bias: Tensor | None = None,
                      **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """transformers' attention-function signature, computed by :func:`attnkit.attention`.

    Args:
        module: the calling attention module (its ``is_causal`` and probe are read).
        query: (B, Hq, Lq, D); key, value: (B, Hkv, Lk, D) with Hq a multiple of Hkv.
        attention_mask: see :func:`engine_inputs`.
        dropout: dropout probability on the weights (transformers passes 0 in eval mode).
        scaling: multiplies ``q @ k^T`` (default ``1 / sqrt(D)``).
        softcap: Gemma 2's tanh logit cap.
        is_causal: overrides ``module.is_causal`` when no mask was built.
        position_bias: optional additive bias (B|1, Hq|1, Lq, Lk).
        kwargs: other transformers arguments (``sliding_window`` is already in the mask).

    Returns:
        ``(out, weights)`` with out (B, Lq, Hq, D), the layout transformers' modules expect, and
        weights (B, Hq, Lq, Lk) only when the model was called with ``output_attentions=True``
        (else None); :func:`attnkit.explain.capture` records chosen layers and heads only.
    """
    for name, why in _UNSUPPORTED.items():
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"the attnkit attention implementation does not support "
                                      f"{name!r} ({why}); load this model with "
                                      f"attn_implementation='eager' or 'sdpa'")
    causal = bool(getattr(module, "is_causal", False) if is_causal is None else is_causal)
    mask, score_bias = engine_inputs(attention_mask, query, key, is_causal=causal,
                                     position_bias=position_bias)
    out = attention(query, key, value, mask=mask, bias=score_bias, scale=scaling,
                    softcap=softcap, dropout_p=dropout)  # (B, Hq, Lq, D)

    def weights() -> Tensor:
        spec = validate(query, key, value, mask=mask, bias=score_bias, scale=scaling,
                        softcap=softcap, dropout_p=0.0)
        return attention_weights(spec)  # (B, Hq, Lq, Lk)

    probe = getattr(module, PROBE_ATTRIBUTE, None)
    if isinstance(probe, AttentionProbe):
        out = probe(out, value, weights)
    returned = weights() if attentions_requested() else None
    return out.transpose(1, 2).contiguous(), returned


def attentions_requested() -> bool:
    """Whether the running transformers forward collects attention weights.

    ``model(..., output_attentions=True)`` records the second output of every attention module
    through a context variable of ``transformers.utils.output_capturing`` (a private name, read
    defensively: on a transformers without it weights are simply not returned). When it asks,
    the attnkit function returns the exact weights, recomputed from q and k after the fused
    forward, instead of requiring the eager implementation.
    """
    try:
        capturing = importlib.import_module("transformers.utils.output_capturing")
        collected = capturing._active_collector.get()
    except (ImportError, AttributeError, LookupError):
        return False
    return isinstance(collected, dict) and bool(
        {"attentions", "cross_attentions"} & set(collected))


def is_running_attnkit(module: nn.Module) -> bool:
    """Whether ``module``'s config selects a registered attnkit attention implementation."""
    config = getattr(module, "config", None)
    name = getattr(config, "_attn_implementation", None)
    if not isinstance(name, str):
        return False
    interface = import_transformers().modeling_utils.ALL_ATTENTION_FUNCTIONS
    return interface.get(name) is attention_forward


def register(name: str = IMPLEMENTATION) -> str:
    """Register attnkit with transformers under ``name``; returns the name. Idempotent.

    Afterwards ``from_pretrained(..., attn_implementation=name)``, ``set_attn_implementation``
    and ``config._attn_implementation = name`` run the model on attnkit's engine, and
    :func:`attnkit.explain.capture` records its attention weights.
    """
    from attnkit.hf.capture import attach_probes  # capture reads is_running_attnkit from here

    transformers = import_transformers()
    if not hasattr(transformers.masking_utils, "AttentionMaskInterface"):
        raise ImportError(f"attnkit's attention implementation needs transformers >= 4.53 (its "
                          f"mask interface; tested with 5.24), found {transformers.__version__}: "
                          f"pip install -U 'attnkit[hf]'")
    transformers.AttentionInterface.register(name, attention_forward)
    transformers.masking_utils.AttentionMaskInterface.register(name, translate_mask)
    register_probe_attacher("transformers", attach_probes)
    return name
