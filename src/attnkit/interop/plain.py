"""What the converters share: which attnkit layers are plain multi-head attention, and GQA
expansion for libraries without grouped heads."""

from __future__ import annotations

from torch import Tensor, nn

from attnkit.layers.multihead import MultiHeadAttention

__all__ = ["check_plain", "repeat_kv_heads"]


def repeat_kv_heads(weight: Tensor, layer: MultiHeadAttention) -> Tensor:
    """(Hkv * Dh, ...) -> (H * Dh, ...): each key/value head's rows repeated for its query heads.

    Exact: query head h of a GQA layer reads key/value head h // (H / Hkv), so a plain
    multi-head layer whose key/value heads are those copies computes the same output.
    """
    lay = layer.layout
    groups = lay.num_heads // lay.num_kv_heads
    rest = weight.shape[1:]
    per_head = weight.reshape(lay.num_kv_heads, lay.head_dim, *rest)
    return per_head.repeat_interleave(groups, dim=0).reshape(lay.num_heads * lay.head_dim, *rest)


def check_plain(layer: MultiHeadAttention, target: str) -> None:
    """Raise ValueError unless ``layer`` is plain softmax multi-head attention that ``target``
    (a library's layer name) can hold: no qk_norm, RoPE, ALiBi or softcap, no subclass with other
    math, plain Linear projections with biases on all or none."""
    if type(layer) is not MultiHeadAttention:
        raise ValueError(f"{type(layer).__name__} changes the attention math of "
                         f"MultiHeadAttention; only plain MultiHeadAttention converts to {target}")
    features = {"qk_norm": layer.q_norm is not None, "rope": layer.rope is not None,
                "alibi": layer.use_alibi, "softcap": layer.softcap is not None}
    used = [name for name, on in features.items() if on]
    if used:
        raise ValueError(f"{target} has no {', '.join(used)}; convert a layer built without "
                         f"{' / '.join(used)}")
    projections = (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj)
    if not all(type(p) is nn.Linear for p in projections):
        raise ValueError(f"only plain nn.Linear projections convert to {target}")
    if len({p.bias is None for p in projections}) != 1:
        raise ValueError(f"{target} has biases on all projections or none; this layer mixes them")
