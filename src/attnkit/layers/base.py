"""The one interface every attention layer shares, and the probe that explanations hook into.

Every attention kind is an :class:`AttentionLayer`::

    y = layer(x, context=None, *, mask=None, cache=None)      # x: (B, L, dim) -> (B, L, dim)

``context`` (B, Lc, context_dim) makes it cross-attention. ``mask`` is an
:mod:`attnkit.masks` object over (query, key) positions. ``cache`` is a KV cache for incremental
decoding (kinds without one raise). A kind with an auxiliary loss returns it from
:meth:`AttentionLayer.auxiliary_loss`; :func:`collect_auxiliary_losses` sums them over a model.

Each layer routes its per-head output through ``self.probe`` (an :class:`AttentionProbe`), giving
a lazily evaluated function for its attention weights. :mod:`attnkit.explain` hooks the probe,
so capture works whatever backend ran and costs nothing when nobody listens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from attnkit.functional.masks import Mask

__all__ = ["PROBE_ATTRIBUTE", "AttentionLayer", "AttentionProbe", "collect_auxiliary_losses",
           "probed_modules", "register_probe_attacher"]

WeightsFn = Callable[[], Tensor]

#: Attribute under which a module that is not an AttentionLayer (e.g. a Hugging Face attention
#: module running attnkit's kernel) carries its AttentionProbe.
PROBE_ATTRIBUTE = "attnkit_probe"

# Functions that give the attention modules of foreign models (Hugging Face) their probe before
# explanations look for probes; filled by bridges such as ``attnkit.hf.register()``.
_PROBE_ATTACHERS: dict[str, Callable[[nn.Module], object]] = {}

class AttentionProbe(nn.Module):
    """Identity on the per-head output; forward hooks here see what explanations need.

    ``forward(out, values, weights_fn)``:
        out: (B, H, Lq, Dv) per-head attention output (before any gating / output projection).
        values: (B, H|Hkv, Lk, Dv) the values it mixed (so dL/dA = dL/dout @ values^T).
        weights_fn: zero-argument function returning the (B, H, Lq, Lk) attention weights,
            computed only if called.
    """

    def forward(self, out: Tensor, values: Tensor, weights_fn: WeightsFn) -> Tensor:
        return out

class AttentionLayer(nn.Module):
    """Base class of every attention kind (see module docstring for the contract)."""

    #: Whether this kind can use a KV cache for incremental decoding.
    supports_cache: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.probe = AttentionProbe()

    def forward(self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None,
                cache: Any = None) -> Tensor:
        raise NotImplementedError

    def auxiliary_loss(self) -> Tensor | None:
        """Loss term from the last forward pass to add to the training loss, if any."""
        return None

    def _reject_cache(self, cache: Any) -> None:
        if cache is not None:
            raise ValueError(f"{type(self).__name__} has no KV cache; decode by re-running the "
                             f"full sequence or use kind 'mha', 'local' or 'linear'")

def register_probe_attacher(name: str, attacher: Callable[[nn.Module], object]) -> None:
    """Add (or replace) a function that attaches probes to a model's foreign attention modules.

    ``attacher(model)`` sets ``module.attnkit_probe = AttentionProbe()`` on every module whose
    attention runs through attnkit, so :func:`probed_modules` (and capture) finds them.
    """
    _PROBE_ATTACHERS[name] = attacher


def probed_modules(model: nn.Module) -> list[tuple[str, nn.Module, AttentionProbe]]:
    """Every attention module of ``model`` with its probe, in ``named_modules`` order.

    Attention layers carry ``probe``; other modules (attached by a registered attacher) carry
    ``attnkit_probe``.
    """
    for attacher in _PROBE_ATTACHERS.values():
        attacher(model)
    found: list[tuple[str, nn.Module, AttentionProbe]] = []
    for name, module in model.named_modules():
        if isinstance(module, AttentionLayer):
            found.append((name, module, module.probe))
        elif isinstance(probe := getattr(module, PROBE_ATTRIBUTE, None), AttentionProbe):
            found.append((name, module, probe))
    return found


def collect_auxiliary_losses(model: nn.Module) -> Tensor | None:
    """Sum of every attention layer's auxiliary loss from the last forward, or None."""
    total: Tensor | None = None
    for module in model.modules():
        if isinstance(module, AttentionLayer):
            loss = module.auxiliary_loss()
            if loss is not None:
                total = loss if total is None else total + loss
    return total

def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    b, length, _ = x.shape
    return x.view(b, length, heads, -1).transpose(1, 2)

def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, L, d) -> (B, L, heads * d)."""
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)

def check_input(x: Tensor, dim: int, name: str = "x") -> None:
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must be (batch, length, {dim}), got shape {tuple(x.shape)}")



def reject_options(kind: str, options: dict[str, Any], names: tuple[str, ...],
                   reason: str = "") -> None:
    """Raise if any of ``names`` is set (truthy) in a kind's MultiHeadAttention ``options``."""
    for name in names:
        if options.get(name):
            raise ValueError(f"{kind} does not support {name}={options[name]!r}"
                             + (f"; {reason}" if reason else ""))
