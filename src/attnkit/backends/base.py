"""What a backend is: a name, what it supports (as data), and a forward function.

Every backend computes exactly the function defined in :mod:`attnkit.functional.math`; they
differ only in speed, memory and what they can handle. The dispatcher asks each one
:meth:`Backend.not_supported_reasons` and runs the first that answers with no reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from attnkit.functional.math import AttentionSpec

__all__ = ["Backend", "Capabilities"]

_FLOATS = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared as data so that reports and test grids can read it."""

    dtypes: frozenset[torch.dtype] = _FLOATS  # accepted q/k/v dtypes
    devices: frozenset[str] = frozenset({"cpu", "cuda"})  # accepted device types
    masks: bool = True  # any attnkit mask (else: none, or what supported_mask allows)
    bias: bool = True  # additive score biases
    bias_grad: bool = True  # gradients into bias tensors (learned tables, dense biases)
    softcap: bool = True  # tanh capping of scores
    dropout: bool = True  # dropout on the weights
    backward: bool = True  # can be differentiated


class Backend(ABC):
    """An implementation of exact attention."""

    name: str = "?"
    capabilities: Capabilities = Capabilities()

    def not_supported_reasons(self, spec: AttentionSpec) -> list[str]:
        """Every reason this backend cannot run ``spec``; empty if it can."""
        caps = self.capabilities
        reasons: list[str] = []
        if spec.q.dtype not in caps.dtypes:
            names = sorted(str(d).removeprefix("torch.") for d in caps.dtypes)
            reasons.append(f"dtype {str(spec.q.dtype).removeprefix('torch.')} not in {names}")
        if spec.q.device.type not in caps.devices:
            reasons.append(f"device {spec.q.device.type} not in {sorted(caps.devices)}")
        if spec.mask is not None and not caps.masks:
            reasons.append(f"mask {spec.mask!r} not supported")
        if spec.bias is not None and not caps.bias:
            reasons.append("score bias not supported")
        if (spec.bias is not None and not caps.bias_grad and spec.needs_grad
                and any(t.requires_grad for t in spec.bias.tensors())):
            reasons.append("gradients into the bias not supported")
        if spec.softcap is not None and not caps.softcap:
            reasons.append("softcap not supported")
        if spec.dropout_p > 0 and not caps.dropout:
            reasons.append("dropout not supported")
        if spec.needs_grad and not caps.backward:
            reasons.append("backward not supported (inputs require grad)")
        reasons.extend(self.extra_reasons(spec))
        return reasons

    def extra_reasons(self, spec: AttentionSpec) -> list[str]:
        """Backend-specific reasons beyond the declared capabilities."""
        return []

    @abstractmethod
    def forward(self, spec: AttentionSpec) -> Tensor:
        """Attention output (B, Hq, Lq, Dv)."""

    def __repr__(self) -> str:
        return f"<backend {self.name}>"
