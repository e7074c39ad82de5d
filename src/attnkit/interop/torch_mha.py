"""Weights both ways between attnkit's MultiHeadAttention and ``torch.nn.MultiheadAttention``.

Shape legend: B batch, L query length, S key length, E model width (``embed_dim``), H heads,
Dh = E / H head width, Ek / Ev key / value input widths (``kdim`` / ``vdim``).

torch keeps the three input projections either packed (``in_proj_weight`` (3E, E), when
``kdim == vdim == E``) or separate (``q_proj_weight`` (E, E), ``k_proj_weight`` (E, Ek),
``v_proj_weight`` (E, Ev)), one ``in_proj_bias`` (3E,) and ``out_proj``; attnkit keeps
``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` as ``nn.Linear``. The math is the same::

    torch_mha(x, c, c, key_padding_mask=pad, need_weights=False)[0]
        == from_torch_mha(torch_mha)(x, c, mask=masks.padding(~pad))     # batch_first=True

Masks translate with :func:`mask_from_torch` (torch marks what may *not* be attended).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnkit.functional import masks
from attnkit.functional.masks import Mask
from attnkit.interop.plain import check_plain, repeat_kv_heads
from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["from_torch_mha", "mask_from_torch", "to_torch_mha"]


def _refuse_unsupported_torch(module: nn.MultiheadAttention) -> None:
    if module.bias_k is not None or module.bias_v is not None:
        raise ValueError("torch MultiheadAttention with add_bias_kv=True appends a learned key and "
                         "value to every sequence, which attnkit's MultiHeadAttention does not "
                         "model; rebuild it with add_bias_kv=False")
    if module.add_zero_attn:
        raise ValueError("torch MultiheadAttention with add_zero_attn=True appends a zero key and "
                         "value to every sequence, which attnkit's MultiHeadAttention does not "
                         "model; rebuild it with add_zero_attn=False")
    if module.kdim != module.vdim:
        raise ValueError(f"torch MultiheadAttention has kdim={module.kdim} != vdim={module.vdim}: "
                         f"keys and values come from two different tensors, while attnkit's "
                         f"layer projects both from one context tensor (context_dim); only "
                         f"kdim == vdim converts")


def _torch_input_weights(module: nn.MultiheadAttention) -> tuple[Tensor, Tensor, Tensor]:
    """The (q, k, v) projection weights, (E, E), (E, Ek), (E, Ev), packed or not."""
    if module._qkv_same_embed_dim:
        q, k, v = module.in_proj_weight.chunk(3)
        return q, k, v
    return module.q_proj_weight, module.k_proj_weight, module.v_proj_weight


@torch.no_grad()
def from_torch_mha(module: nn.MultiheadAttention, *, backend: str = "auto"
                   ) -> MultiHeadAttention:
    """attnkit layer with the weights of ``module`` (copied, same dtype and device).

    The layer always takes batch-first ``(B, L, E)`` inputs; for a ``batch_first=False`` module
    transpose its ``(L, B, E)`` inputs. Keys and values come from one ``context`` (B, S, Ek), as
    in ``module(x, c, c)``. Dropout on the attention weights is carried over.

    Raises ValueError for ``add_bias_kv``, ``add_zero_attn`` and ``kdim != vdim``.
    """
    if not isinstance(module, nn.MultiheadAttention):
        raise TypeError(f"expected torch.nn.MultiheadAttention, got {type(module).__name__}")
    _refuse_unsupported_torch(module)
    has_bias = module.in_proj_bias is not None
    weight = module.out_proj.weight
    layer = MultiHeadAttention(module.embed_dim, module.num_heads, context_dim=module.kdim,
                               bias=has_bias, dropout=module.dropout, backend=backend)
    layer.to(device=weight.device, dtype=weight.dtype)
    targets = (layer.q_proj, layer.k_proj, layer.v_proj)
    for target, source in zip(targets, _torch_input_weights(module)):
        target.weight.copy_(source)
    if has_bias:
        for target, source_bias in zip(targets, module.in_proj_bias.chunk(3)):
            target.bias.copy_(source_bias)
        layer.out_proj.bias.copy_(module.out_proj.bias)
    layer.out_proj.weight.copy_(module.out_proj.weight)
    layer.train(module.training)
    return layer


def _check_torch_layout(layer: MultiHeadAttention) -> None:
    lay = layer.layout
    if lay.num_heads * lay.head_dim != lay.dim:
        raise ValueError(f"torch MultiheadAttention needs num_heads * head_dim == dim, got "
                         f"{lay.num_heads} * {lay.head_dim} != {lay.dim}")


@torch.no_grad()
def to_torch_mha(layer: MultiHeadAttention, *, batch_first: bool = True
                 ) -> nn.MultiheadAttention:
    """``torch.nn.MultiheadAttention`` with the weights of ``layer`` (copied).

    GQA / MQA layers convert exactly by repeating each key/value head's weights for its query
    heads (torch has no grouped heads). Raises ValueError for what torch cannot express: qk_norm,
    RoPE, ALiBi, softcap, ``num_heads * head_dim != dim`` and subclasses with other math.
    """
    check_plain(layer, "torch MultiheadAttention")
    _check_torch_layout(layer)
    lay = layer.layout
    context_dim = layer.k_proj.in_features
    has_bias = layer.q_proj.bias is not None
    weight = layer.q_proj.weight
    module = nn.MultiheadAttention(lay.dim, lay.num_heads, dropout=layer.dropout, bias=has_bias,
                                   kdim=context_dim, vdim=context_dim, batch_first=batch_first,
                                   device=weight.device, dtype=weight.dtype)
    weights = (layer.q_proj.weight, repeat_kv_heads(layer.k_proj.weight, layer),
               repeat_kv_heads(layer.v_proj.weight, layer))
    if module._qkv_same_embed_dim:
        module.in_proj_weight.copy_(torch.cat(weights))
    else:
        module.q_proj_weight.copy_(weights[0])
        module.k_proj_weight.copy_(weights[1])
        module.v_proj_weight.copy_(weights[2])
    module.out_proj.weight.copy_(layer.out_proj.weight)
    if has_bias:
        module.in_proj_bias.copy_(torch.cat([layer.q_proj.bias,
                                             repeat_kv_heads(layer.k_proj.bias, layer),
                                             repeat_kv_heads(layer.v_proj.bias, layer)]))
        module.out_proj.bias.copy_(layer.out_proj.bias)
    module.train(layer.training)
    return module


def mask_from_torch(*, key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
                    is_causal: bool = False) -> Mask | None:
    """attnkit mask (True = may attend) from torch MultiheadAttention's mask arguments.

    ``key_padding_mask`` (B, S): bool True = padding, or float with ``-inf`` at padding.
    ``attn_mask`` (L, S) or (B * H, L, S): bool True = not allowed, or float with ``-inf``
    where not allowed (other float values are additive scores; use :func:`attnkit.bias.dense`).
    ``is_causal``: the causal mask, top-left aligned as torch builds it (query i sees keys
    j <= i, also when L != S).
    """
    parts: list[Mask] = []
    if key_padding_mask is not None:
        parts.append(masks.padding(~_blocked(key_padding_mask, "key_padding_mask")))
    if attn_mask is not None:
        blocked = _blocked(attn_mask, "attn_mask")
        if blocked.dim() == 3:
            raise ValueError("a per-head (B * H, L, S) attn_mask needs the batch size to "
                             "unflatten; pass masks.dense(~attn_mask.view(B, H, L, S)) yourself")
        parts.append(masks.dense(~blocked))
    if is_causal:
        parts.append(masks.causal(offset=0))  # top-left aligned, as in torch and Keras
    if not parts:
        return None
    combined = parts[0]
    for part in parts[1:]:
        combined = combined & part
    return combined


def _blocked(mask: Tensor, name: str) -> Tensor:
    """torch's mask convention -> bool, True where attention is not allowed."""
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise ValueError(f"{name} must be bool or float, got {mask.dtype}")
    finite = mask[torch.isfinite(mask)]
    if bool((finite != 0).any()):
        raise ValueError(f"{name} holds additive float scores besides 0 and -inf; only masks "
                         f"convert (pass the scores as attnkit.bias.dense(...) instead)")
    return torch.isneginf(mask)
