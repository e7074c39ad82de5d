"""torch.nn.functional.scaled_dot_product_attention, in two flavours.

- ``sdpa``: only what maps onto SDPA's native flags (no mask, or causal with Lq == Lk), so
  torch's fused kernels (flash / memory-efficient) run with memory linear in L.
- ``sdpa_dense``: any mask and bias, passed as a dense (B, H, Lq, Lk) mask (boolean, or
  additive float with a bias): exact and fused, but memory quadratic in L (what users do with
  SDPA when their mask has no flag).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from attnkit.backends.base import Backend, Capabilities
from attnkit.functional.masks import is_causal
from attnkit.functional.math import AttentionSpec


def is_native_causal(spec: AttentionSpec) -> bool:
    """Whether the mask is plain causal aligned the way SDPA's ``is_causal`` is (top left)."""
    return is_causal(spec.mask, spec.lq, spec.lk, offset=0)


def _sdpa(spec: AttentionSpec, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
    return F.scaled_dot_product_attention(
        spec.q, spec.k, spec.v, attn_mask=attn_mask, dropout_p=spec.dropout_p,
        is_causal=is_causal, scale=spec.scale, enable_gqa=spec.heads != spec.kv_heads)


class SdpaBackend(Backend):
    name = "sdpa"
    # Native flags only: no mask, or causal with Lq == Lk.
    capabilities = Capabilities(bias=False, softcap=False)

    def extra_reasons(self, spec: AttentionSpec) -> list[str]:
        if (spec.mask is None or spec.mask.band(spec.lq, spec.lk) == (None, None)
                or is_native_causal(spec)):
            return []
        return [f"mask {spec.mask!r} has no native SDPA flag (only causal with Lq == Lk)"]

    def forward(self, spec: AttentionSpec) -> Tensor:
        return _sdpa(spec, None, is_native_causal(spec))


class SdpaDenseBackend(Backend):
    name = "sdpa_dense"
    capabilities = Capabilities(softcap=False)  # materializes a dense Lq x Lk float mask

    def forward(self, spec: AttentionSpec) -> Tensor:
        q = spec.q
        attn_mask: Tensor | None = None  # additive float (B|1, H|1, Lq, Lk), or bool: True = keep
        if spec.bias is not None:
            attn_mask = spec.bias.dense(spec.lq, spec.lk, q.device).to(q.dtype)
        row_has_key = None
        if spec.mask is not None:
            allowed = spec.mask.dense(spec.lq, spec.lk, q.device)  # (B|1, H|1, Lq, Lk)
            row_has_key = allowed.any(-1, keepdim=True)
            # Rows with no key would be NaN in some torch versions: let them attend everywhere,
            # then zero them (their gradient is zero too).
            allowed = allowed | ~row_has_key
            attn_mask = (allowed if attn_mask is None
                         else attn_mask.masked_fill(~allowed, -math.inf))
        out = _sdpa(spec, attn_mask, False)
        if row_has_key is not None:
            out = out.masked_fill(~row_has_key, 0.0)
        return out
