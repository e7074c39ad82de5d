"""Choosing a backend: walk a priority list, run the first that supports the call, explain why.

``backend="auto"`` tries, in order: ``sdpa`` (torch's fused kernels; no mask or plain causal),
``blocked`` (any mask or bias, skips empty tiles, linear memory; on CUDA only once the dense
mask would be too large, see :func:`prefers_dense_on_gpu`), ``flex`` (only once opted in),
``sdpa_dense`` (dense mask, needed for dropout with a mask), ``reference``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attnkit.backends import tuning
from attnkit.backends.base import Backend
from attnkit.backends.blocked import BlockedBackend
from attnkit.backends.flex import FlexBackend, allowed_in_auto
from attnkit.backends.reference import ReferenceBackend
from attnkit.backends.sdpa import SdpaBackend, SdpaDenseBackend
from attnkit.functional.math import AttentionSpec

__all__ = ["DispatchReport", "NoBackendError", "get_backend", "list_backends", "register_backend",
           "select_backend"]

# The built-in backends, filled without calling a function of this module: importing attnkit
# then runs none of its code (mutmut's forced-fail check makes every such call raise).
_REGISTRY: dict[str, Backend] = {
    b.name: b for b in (SdpaBackend(), BlockedBackend(), FlexBackend(), SdpaDenseBackend(),
                        ReferenceBackend())}
AUTO_ORDER = ["sdpa", "blocked", "flex", "sdpa_dense", "reference"]


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend under ``backend.name``."""
    _REGISTRY[backend.name] = backend


def list_backends() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of "
                         f"{['auto', *_REGISTRY]}") from None


class NoBackendError(ValueError):
    """No backend (or not the one asked for) can run this call; the message lists every reason."""


@dataclass
class DispatchReport:
    """Which backend runs a call and why the others would not."""

    chosen: str | None
    reasons: dict[str, list[str]] = field(default_factory=dict)  # backend -> reasons it can't

    def __str__(self) -> str:
        lines = [f"chosen: {self.chosen or 'none'}"]
        for name, why in self.reasons.items():
            status = "ok" if not why else "; ".join(why)
            lines.append(f"  {name:<11} {status}")
        return "\n".join(lines)


def prefers_dense_on_gpu(spec: AttentionSpec) -> bool:
    """Whether auto should pass over ``blocked`` for ``sdpa_dense`` (CUDA, mask small enough)."""
    # On a GPU the blocked backend runs its pure PyTorch tile loop, about 10x slower than SDPA
    # with a dense mask: auto prefers the dense mask while it stays small.
    return spec.q.device.type == "cuda" and dense_mask_is_small(spec)


def dense_mask_is_small(spec: AttentionSpec) -> bool:
    """Whether ``sdpa_dense`` can run ``spec`` with a dense mask of at most the tuning constant
    ``gpu_dense_mask_max_elements`` elements: (B|1) x (H|1) x Lq x Lk, the batch and head
    counts being those the mask and bias broadcast to. False without a mask or bias (nothing
    dense to build)."""
    if spec.mask is None and spec.bias is None:
        return False
    dense = _REGISTRY.get("sdpa_dense")
    if dense is None or dense.not_supported_reasons(spec):
        return False
    parts = [m for m in (spec.mask, spec.bias) if m is not None]
    batch = max(p.batch_size or 1 for p in parts)
    heads = max(p.num_heads or 1 for p in parts)
    return batch * heads * spec.lq * spec.lk <= tuning.current().gpu_dense_mask_max_elements


def _auto_reasons(name: str, backend: Backend, spec: AttentionSpec) -> list[str]:
    reasons = backend.not_supported_reasons(spec)
    if name == "flex" and not allowed_in_auto():
        reasons = ["needs compilation: opt in with attnkit.backends.flex.allow_in_auto()",
                   *reasons]
    if name == "blocked" and not reasons and prefers_dense_on_gpu(spec):
        reasons = ["auto: on CUDA sdpa_dense is faster while the dense mask fits "
                   f"(<= {tuning.current().gpu_dense_mask_max_elements} elements); force "
                   "backend='blocked' for linear memory"]
    return reasons


def report(spec: AttentionSpec, backend: str = "auto") -> DispatchReport:
    """Reasons for every backend, and the one that ``backend`` selects."""
    if backend != "auto":
        chosen = get_backend(backend)
        reasons = {chosen.name: chosen.not_supported_reasons(spec)}
        return DispatchReport(chosen.name if not reasons[chosen.name] else None, reasons)
    result = DispatchReport(None)
    for name in _auto_order():
        why = _auto_reasons(name, _REGISTRY[name], spec)
        result.reasons[name] = why
        if not why and result.chosen is None:
            result.chosen = name
    return result


def _auto_order() -> list[str]:
    return [n for n in AUTO_ORDER if n in _REGISTRY] + [n for n in _REGISTRY
                                                         if n not in AUTO_ORDER]


def select_backend(spec: AttentionSpec, backend: str = "auto") -> Backend:
    """The backend to run, or NoBackendError listing every reason.

    ``auto`` takes the first backend in priority order that supports the call, as
    :func:`report` would, without asking the ones after it (every call of every layer comes
    through here: a decode step of GPT-2 small makes 12 calls per token); the full report is
    built only to explain a failure."""
    if backend != "auto":
        chosen = get_backend(backend)
        reasons = chosen.not_supported_reasons(spec)
        if reasons:
            raise NoBackendError(f"backend {backend!r} cannot run this call: "
                                 f"{'; '.join(reasons)}. Use backend='auto' or fix the inputs.")
        return chosen
    for name in _auto_order():
        if not _auto_reasons(name, _REGISTRY[name], spec):
            return _REGISTRY[name]
    raise NoBackendError(f"no backend supports this call:\n{report(spec)}")
