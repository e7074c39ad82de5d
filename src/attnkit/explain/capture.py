"""Record the attention weights (and optionally their gradients) of any attnkit model.

Shape legend: B batch, H stored heads, Lq query length, Lk key length, Dv value head dim,
k entries kept per row (top-k storage).

Every :class:`~attnkit.layers.AttentionLayer` routes its per-head output through
``self.probe(out, values, weights_fn)``. A forward hook on the probe calls ``weights_fn()`` (the
weights recomputed from the layer's queries and keys) only for the selected layers, so the model
keeps whatever fast backend it chose and layers nobody asked for cost nothing::

    with attnkit.explain.capture(model, layers=[0, 3], heads=[0, 1], gradients=True) as cap:
        model(x)[:, target].sum().backward()
    cap.records[0].weights        # (B, 2, Lq, Lk)
    cap.records[0].grad           # dL/dA, same shape

Gradients of the weights come without re-running attention on a slow path: since
``out = A @ V``, ``dL/dA = dL/dout @ V^T``; a tensor hook on the per-head output gives dL/dout.
(For kinds whose output is *not* ``A @ V`` with the weights they report — e.g. differential or
gated attention — this is the gradient with respect to the implied ``A`` of the probe contract.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.functional.math import expand_kv
from attnkit.layers.base import AttentionLayer, AttentionProbe, probed_modules

__all__ = ["AttentionCapture", "AttentionRecord", "LayerSelector", "capture",
           "find_attention_layers"]

LayerSelector = Iterable[int | str] | Callable[[str], bool] | None


@dataclass
class AttentionRecord:
    """The attention of one call of one layer.

    Dense storage: ``weights`` is (B, H, Lq, Lk). Top-k storage: ``weights`` holds the k largest
    entries of each row, (B, H, Lq, k), and ``indices`` their key positions; every other entry
    was dropped (read it back as 0 through :meth:`dense_weights`).
    """

    name: str  # module name of the attention layer (from model.named_modules())
    call: int  # 0 for the first call of this layer in the capture, 1 for the second, ...
    cross: bool  # True when the layer attended to a separate context (encoder-decoder)
    heads: tuple[int, ...]  # which of the layer's heads are stored, in order
    num_heads: int  # how many heads the layer has
    key_length: int  # Lk, needed to rebuild dense maps from top-k storage
    weights: Tensor  # (B, H, Lq, Lk) or (B, H, Lq, k) top-k values, in the storage dtype
    indices: Tensor | None = None  # (B, H, Lq, k) key positions of the kept entries, or None
    grad: Tensor | None = None  # dL/dA in the same layout as ``weights`` (after backward)

    @property
    def query_length(self) -> int:
        return int(self.weights.shape[2])

    def _dense(self, values: Tensor) -> Tensor:
        values = values.float()
        if self.indices is None:
            return values
        b, h, lq, _ = values.shape
        dense = values.new_zeros(b, h, lq, self.key_length)
        return dense.scatter_(-1, self.indices.long(), values)

    def dense_weights(self) -> Tensor:
        """(B, H, Lq, Lk) float32 weights; dropped top-k entries read as 0."""
        return self._dense(self.weights)

    def dense_grad(self) -> Tensor:
        """(B, H, Lq, Lk) float32 dL/dA; raises if no gradient was recorded."""
        if self.grad is None:
            raise ValueError(f"no gradient recorded for layer {self.name!r}: pass "
                             f"gradients=True to capture() and call backward() inside it")
        return self._dense(self.grad)


@dataclass
class AttentionCapture:
    """What :func:`capture` recorded: one :class:`AttentionRecord` per layer call, in call order."""

    records: list[AttentionRecord] = field(default_factory=list)
    storage: str = "float32, dense"  # how weights are stored (dtype, dense or top-k per row)
    # Per-head outputs whose gradients fill ``grad`` (gradients=True only): pass them as
    # ``inputs`` to torch.autograd.grad to get dL/dA without touching parameter .grad fields.
    outputs: list[Tensor] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[AttentionRecord]:
        return iter(self.records)

    def __getitem__(self, key: int | str) -> AttentionRecord:
        if isinstance(key, int):
            return self.records[key]
        for record in self.records:
            if record.name == key:
                return record
        raise KeyError(f"no record for layer {key!r}; recorded: {self.names}")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def self_attention(self) -> list[AttentionRecord]:
        return [r for r in self.records if not r.cross]

    def cross_attention(self) -> list[AttentionRecord]:
        return [r for r in self.records if r.cross]

    def clear(self) -> None:
        """Forget all records (e.g. between forward passes inside one capture)."""
        self.records.clear()
        self.outputs.clear()


def find_attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every attention layer of ``model`` as (name, layer), in ``named_modules`` order.

    Besides attnkit's own layers this finds the attention modules of a Hugging Face model
    running ``attn_implementation="attnkit"`` (after ``attnkit.hf.register()``).
    """
    return [(name, module) for name, module, _ in probed_modules(model)]


def _select_layers(found: list[tuple[str, nn.Module]],
                   layers: LayerSelector) -> list[tuple[str, nn.Module]]:
    if layers is None:
        return found
    if callable(layers):
        return [(n, m) for n, m in found if layers(n)]
    names = [n for n, _ in found]
    chosen: list[tuple[str, nn.Module]] = []
    for item in layers:
        if isinstance(item, int):
            if not -len(found) <= item < len(found):
                raise ValueError(f"layer index {item} is out of range: the model has "
                                 f"{len(found)} attention layers {names}")
            chosen.append(found[item])
        elif item in names:
            chosen.append(found[names.index(item)])
        else:
            raise ValueError(f"no attention layer named {item!r}; the model's attention layers "
                             f"are {names}")
    return chosen


def _context_given(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if not isinstance(module, AttentionLayer):  # a foreign module says so itself (transformers)
        return bool(getattr(module, "is_cross_attention", False))
    context = args[1] if len(args) > 1 else kwargs.get("context")
    return context is not None


@contextmanager
def capture(model: nn.Module, *, layers: LayerSelector = None,
            heads: Iterable[int] | None = None, gradients: bool = False,
            dtype: torch.dtype = torch.float32, top_k: int | None = None,
            ) -> Iterator[AttentionCapture]:
    """Record attention weights of ``model``'s attention layers while the block runs.

    Args:
        model: any module containing attnkit attention layers.
        layers: None (all), indices / names into :func:`find_attention_layers`, or a predicate
            on the layer name.
        heads: query heads to keep (None: all).
        gradients: also record dL/dA for each stored map; call ``backward()`` inside the block.
        dtype: storage dtype (e.g. ``torch.float16`` halves memory).
        top_k: keep only the k largest weights of each query row (bounded memory on long inputs).

    The model's backend is never changed: weights are recomputed from queries and keys only for
    the selected layers. Kinds without explicit weights (linear, performer, ...) raise a
    ValueError from their weights function above their size limit; it is re-raised naming the
    layer.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive number of entries per row, got {top_k}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype for storing weights, got {dtype}")
    head_list = None if heads is None else tuple(int(h) for h in heads)
    probes: dict[int, AttentionProbe] = {}
    found: list[tuple[str, nn.Module]] = []
    for layer_name, module, probe in probed_modules(model):
        probes[id(module)] = probe
        found.append((layer_name, module))
    if not found:
        raise ValueError(f"{type(model).__name__} has no attnkit attention layers to capture; "
                         f"a Hugging Face model must run attnkit: call attnkit.hf.register() "
                         f"and load it with attn_implementation='attnkit'")
    chosen = _select_layers(found, layers)
    storage = f"{str(dtype).removeprefix('torch.')}, " + (
        "dense" if top_k is None else f"top-{top_k} entries per query row")
    result = AttentionCapture(storage=storage)
    handles: list[Any] = []
    calls: dict[str, int] = {}

    for name, layer in chosen:
        state: dict[str, bool] = {"cross": False}

        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                     state: dict[str, bool] = state) -> None:
            state["cross"] = _context_given(module, args, kwargs)

        def probe_hook(module: nn.Module, args: tuple[Any, ...], output: Tensor,
                       name: str = name, state: dict[str, bool] = state) -> None:
            out, values, weights_fn = args
            try:
                with torch.no_grad():
                    weights = weights_fn().detach()  # (B, Hall, Lq, Lk)
            except ValueError as err:
                raise ValueError(f"capturing layer {name!r}: {err}") from err
            num_heads = int(weights.shape[1])
            keep = tuple(range(num_heads)) if head_list is None else head_list
            bad = [h for h in keep if not 0 <= h < num_heads]
            if bad:
                raise ValueError(f"heads {bad} do not exist in layer {name!r}, which has "
                                 f"{num_heads} heads (0..{num_heads - 1})")
            head_index = torch.tensor(keep, device=weights.device)
            if head_list is not None:
                weights = weights.index_select(1, head_index)
            indices = None
            if top_k is not None and top_k < weights.shape[-1]:
                weights, indices = weights.topk(top_k, dim=-1)
                indices = indices.to(torch.int32 if weights.shape[-1] > 32767 else torch.int16)
            record = AttentionRecord(
                name=name, call=calls.get(name, 0), cross=state["cross"], heads=keep,
                num_heads=num_heads, key_length=int(values.shape[2]),
                weights=weights.to(dtype), indices=indices)
            calls[name] = record.call + 1
            result.records.append(record)
            if gradients and out.requires_grad:
                v = values.detach()

                def grad_hook(grad_out: Tensor, record: AttentionRecord = record,
                              v: Tensor = v) -> None:
                    # dL/dA = dL/dout @ V^T  (out = A @ V), V expanded for GQA.
                    full_v = expand_kv(v, grad_out.shape[1])
                    grad_a = grad_out.detach() @ full_v.transpose(-1, -2)  # (B, Hall, Lq, Lk)
                    if head_list is not None:
                        grad_a = grad_a.index_select(1, head_index)
                    if record.indices is not None:
                        grad_a = grad_a.gather(-1, record.indices.long())
                    record.grad = grad_a.to(dtype)

                output.register_hook(grad_hook)
                result.outputs.append(output)

        handles.append(layer.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(probes[id(layer)].register_forward_hook(probe_hook))
    try:
        yield result
    finally:
        for handle in handles:
            handle.remove()

