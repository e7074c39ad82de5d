"""Replace a pretrained transformers model's attention with any attnkit kind, for experiments.

    import attnkit.hf
    model = AutoModelForCausalLM.from_pretrained(path)
    report = attnkit.hf.swap_attention(model, kind="local", window=64)
    print(report)                     # which layers, which parameters were kept, which are new
    model.generate(...)               # runs, trains and generates as before

Shape legend: B batch, L new tokens, S keys (cache included), H / Hkv query / key-value heads,
Dh head dim, dim model width.

Each self-attention module of the model (GPT-2 ``GPT2Attention``, BERT / ViT
``*SelfAttention``, Llama-style ``q_proj/k_proj/v_proj/o_proj`` modules) is replaced by a
:class:`SwappedAttention`: the same call signature around an attnkit layer built with
:func:`attnkit.layers.build_attention`. What is kept and what is new:

- kept: the pretrained query, key, value and output projections (copied into the layer's
  ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``; GPT-2's fused ``Conv1D`` is split and
  transposed), the attention dropout probability, Gemma 2's softcap, the model's positions
  (learned embeddings outside attention, or the model's own rotary ``cos``/``sin``), its masks
  (the model runs ``attn_implementation="attnkit"``, so padding / causal / sliding-window masks
  arrive as attnkit masks) and its KV cache (``generate()`` works for kinds with a cache);
- new: whatever the kind adds, listed in the returned :class:`SwapReport`. ``mha`` and ``local``
  with a window at least the sequence length compute exactly the original attention.
  ``differential`` pairs the original heads: query/key heads ``2h`` and ``2h + 1`` become the two
  maps of differential head ``h`` and value heads ``2h``, ``2h + 1`` its 2Dh-wide value, so every
  pretrained projection is kept; its lambda vectors (paper initialisation, lambda_init from the
  layer's depth) and per-head RMSNorm are new, and it does not start equal to the original.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from attnkit import masks
from attnkit.hf.capture import find_hf_attention_modules
from attnkit.hf.engine_backend import IMPLEMENTATION, register
from attnkit.layers import LinearAttention, PerformerAttention, build_attention
from attnkit.layers.base import AttentionLayer
from attnkit.layers.kv_cache import KVCache

__all__ = ["HEADS_PER_KIND_HEAD", "SwapReport", "SwappedAttention", "swap_attention"]

#: Kinds whose every head is built from several of the original heads (differential: two maps).
HEADS_PER_KIND_HEAD = {"differential": 2}

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class SwapReport:
    """What :func:`swap_attention` did."""

    kind: str
    options: dict[str, Any]
    layers: list[str] = field(default_factory=list)  # module names that were replaced
    kept: list[str] = field(default_factory=list)  # kind parameters holding pretrained values
    new: list[str] = field(default_factory=list)  # kind parameters with fresh initial values

    def __str__(self) -> str:
        return (f"swapped {len(self.layers)} attention modules for {self.kind!r} "
                f"{self.options}\n  kept (per layer): {', '.join(self.kept) or '-'}\n"
                f"  new (per layer):  {', '.join(self.new) or '-'}")


@dataclass(frozen=True)
class _Source:
    """The pretrained projections and head layout read from one transformers module."""

    q: tuple[Tensor, Tensor | None]  # Linear layout: weight (out, in), bias (out,)
    k: tuple[Tensor, Tensor | None]
    v: tuple[Tensor, Tensor | None]
    o: tuple[Tensor, Tensor | None] | None  # None: the output projection lives outside
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dim: int
    rotary: bool  # positions come in as position_embeddings=(cos, sin)
    options: dict[str, Any]  # extra layer options carried over (dropout, softcap)


def _linear(module: Any) -> tuple[Tensor, Tensor | None]:
    return module.weight.detach(), None if module.bias is None else module.bias.detach()


def _conv1d(module: Any) -> tuple[Tensor, Tensor]:
    """transformers' Conv1D (``x @ W + b``, W (in, out)) in Linear layout."""
    return module.weight.detach().t(), module.bias.detach()


def _dropout_p(module: nn.Module) -> float:
    for name in ("attention_dropout", "attn_dropout", "dropout"):
        value = getattr(module, name, None)
        if isinstance(value, nn.Dropout):
            return float(value.p)
        if isinstance(value, float):
            return value
    return 0.0


def _read_source(name: str, module: Any) -> _Source:  # a transformers attention module
    """The projections of a GPT-2, BERT / ViT or Llama-style attention module."""
    config = getattr(module, "config", None)
    if getattr(module, "q_norm", None) is not None or getattr(module, "k_norm", None) is not None:
        raise NotImplementedError(f"{name}: attention with QK norms (Qwen3, Gemma 3, ...) is not "
                                  f"supported by swap_attention yet")
    options: dict[str, Any] = {"dropout": _dropout_p(module)}
    softcap = getattr(module, "attn_logit_softcapping", None)
    if softcap is not None:
        options["softcap"] = float(softcap)
    if hasattr(module, "c_attn") and hasattr(module, "c_proj"):  # GPT-2
        weight, bias = _conv1d(module.c_attn)
        dim = weight.shape[1]
        heads, head_dim = int(module.num_heads), int(module.head_dim)
        qw, kw, vw = weight.split(dim, 0)
        qb, kb, vb = bias.split(dim, 0)
        source = _Source((qw, qb), (kw, kb), (vw, vb), _conv1d(module.c_proj), heads, heads,
                         head_dim, dim, rotary=False, options=options)
    elif all(hasattr(module, n) for n in ("query", "key", "value")):  # BERT, ViT, ...
        heads, head_dim = int(module.num_attention_heads), int(module.attention_head_size)
        source = _Source(_linear(module.query), _linear(module.key), _linear(module.value), None,
                         heads, heads, head_dim, module.query.in_features, rotary=False,
                         options=options)
    elif all(hasattr(module, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):  # Llama...
        head_dim = int(module.head_dim)
        heads = module.q_proj.out_features // head_dim
        kv_heads = module.k_proj.out_features // head_dim
        forward = inspect.signature(inspect.unwrap(type(module).forward))
        source = _Source(_linear(module.q_proj), _linear(module.k_proj), _linear(module.v_proj),
                         _linear(module.o_proj), heads, kv_heads, head_dim,
                         module.q_proj.in_features,
                         rotary="position_embeddings" in forward.parameters, options=options)
    else:
        raise NotImplementedError(f"{name} ({type(module).__name__}): swap_attention knows "
                                  f"GPT-2 (c_attn/c_proj), BERT/ViT (query/key/value) and "
                                  f"Llama-style (q_proj/k_proj/v_proj/o_proj) attention modules")
    scaling = getattr(module, "scaling", None)
    if scaling is not None and abs(float(scaling) - source.head_dim ** -0.5) > 1e-9:
        raise NotImplementedError(f"{name} scales scores by {float(scaling):.6g}, not "
                                  f"1/sqrt(head_dim) = {source.head_dim ** -0.5:.6g} "
                                  f"(config {type(config).__name__}); attnkit kinds use the "
                                  f"latter")
    return source


class _ModelRotary(nn.Module):
    """Applies the model's own rotary ``cos``/``sin`` (set per call) where attnkit applies RoPE.

    Plain PyTorch: ``x * cos + rotate_half(x) * sin`` with cos, sin (B, L, Dh) — transformers'
    ``apply_rotary_pos_emb``, so rope scaling variants come for free.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cos_sin: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:  # x: (B, H, L, Dh)
        if self.cos_sin is None:
            raise RuntimeError("the swapped attention was called without position_embeddings")
        cos, sin = (t.unsqueeze(1).to(x.dtype) for t in self.cos_sin)  # (B, 1, L, Dh)
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-second, first), dim=-1) * sin


class _CacheView(KVCache):
    """One layer of a transformers ``Cache`` seen through attnkit's KVCache interface."""

    def __init__(self, cache: Any, layer_index: int) -> None:
        self.cache, self.layer_index = cache, layer_index
        self.position = int(cache.get_seq_length(layer_index))

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, masks.Mask | None]:
        keys, values = self.cache.update(k, v, self.layer_index)
        return keys, values, None  # the model's mask already covers the cached keys

    def reset(self) -> None:
        raise NotImplementedError("the transformers cache is reset by the model")


def _takes_kv_cache(layer: AttentionLayer) -> bool:
    """Whether the kind decodes with keys and values (a KVCache), which transformers' cache
    holds; kernelized kinds keep a RecurrentState instead, some kinds have no cache."""
    return layer.supports_cache and not isinstance(layer, (LinearAttention, PerformerAttention))


class SwappedAttention(nn.Module):
    """A transformers self-attention module's call signature around an attnkit layer.

    ``forward(hidden_states (B, L, dim), attention_mask, cache=..., position_embeddings=...)``
    returns ``(out, None)`` like the module it replaced: out is (B, L, dim) after the kept output
    projection, or the merged heads (B, L, H * Dh) where the model applies it outside (BERT).
    """

    def __init__(self, layer: AttentionLayer, *, layer_index: int, is_causal: bool,
                 rotary: _ModelRotary | None, after: nn.Module | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.layer_index = layer_index
        self.is_causal = is_causal
        self.rotary = rotary  # also the layer's ``rope``: set per call
        self.after = after  # e.g. GPT-2's residual dropout, kept from the original module

    def forward(self, hidden_states: Tensor, attention_mask: Any = None, *args: Any,
                cache: Any = None, position_embeddings: tuple[Tensor, Tensor] | None = None,
                **kwargs: Any) -> tuple[Tensor, None]:
        cache = kwargs.get("past_key_values", cache)
        if isinstance(attention_mask, Tensor) and attention_mask.is_floating_point():
            raise ValueError("swapped attention takes attnkit or boolean masks; run the model "
                             "with attn_implementation='attnkit' (swap_attention sets it)")
        mask: masks.Mask | None
        if isinstance(attention_mask, masks.Mask) or attention_mask is None:
            # None: the model made no mask (no padding, and for encoders no pattern either)
            mask = masks.causal() if attention_mask is None and self.is_causal \
                else attention_mask
        else:
            mask = masks.dense(attention_mask.bool())  # a caller's own 4-D boolean mask
        if self.rotary is not None:
            self.rotary.cos_sin = position_embeddings
        view = None
        if cache is not None:
            if not _takes_kv_cache(self.layer):
                raise ValueError(f"attention kind {type(self.layer).__name__} cannot keep its "
                                 f"state in transformers' KV cache; call the model with "
                                 f"use_cache=False (generate(..., use_cache=False) re-runs the "
                                 f"sequence per token)")
            view = _CacheView(cache, self.layer_index)
        try:
            out = self.layer(hidden_states, mask=mask, cache=view)
        finally:
            if self.rotary is not None:
                self.rotary.cos_sin = None
        if self.after is not None:
            out = self.after(out)
        return out, None


def _keep(layer: nn.Module, name: str, weight: Tensor, bias: Tensor | None) -> None:
    """Give ``layer.<name>`` the pretrained weight and bias (a bias-free kind gets one if the
    model has it)."""
    target = getattr(layer, name)
    if not isinstance(target, nn.Linear) or target.weight.shape != weight.shape:
        shape = getattr(getattr(target, "weight", None), "shape", None)
        raise ValueError(f"cannot keep the pretrained {name}: the kind's projection has shape "
                         f"{tuple(shape) if shape is not None else type(target).__name__}, the "
                         f"model's {tuple(weight.shape)}")
    kept = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        kept.weight.copy_(weight)
        if kept.bias is not None and bias is not None:
            kept.bias.copy_(bias)
    setattr(layer, name, kept)


def _build(kind: str, source: _Source, layer_index: int, options: dict[str, Any]
           ) -> tuple[AttentionLayer, _ModelRotary | None]:
    group = HEADS_PER_KIND_HEAD.get(kind, 1)
    if source.num_heads % group or source.num_kv_heads % group:
        raise ValueError(f"kind {kind!r} builds each head from {group} original heads; the model "
                         f"has {source.num_heads} query / {source.num_kv_heads} key-value heads")
    rotary = _ModelRotary() if source.rotary else None
    chosen: dict[str, Any] = {**source.options, **options}
    if rotary is not None:
        chosen["rope"] = rotary
    if group > 1:
        chosen.setdefault("layer_index", layer_index)
    try:
        layer = build_attention(kind, dim=source.dim, num_heads=source.num_heads // group,
                                num_kv_heads=source.num_kv_heads // group,
                                head_dim=source.head_dim, bias=source.q[1] is not None, **chosen)
    except ValueError as err:
        carried = {k: v for k, v in source.options.items() if k not in options}
        hint = "" if not carried else (
            f" (the model's {carried} were carried over: pass e.g. dropout=0.0 to "
            f"swap_attention to leave them out)")
        raise ValueError(f"attention kind {kind!r}: {err}{hint}") from err
    for projection, (weight, bias) in zip(_PROJECTIONS[:3], (source.q, source.k, source.v)):
        _keep(layer, projection, weight, bias)
    if source.o is None:  # the model applies its output projection after this module (BERT)
        layer.out_proj = nn.Identity()  # type: ignore[assignment]
    else:
        _keep(layer, "out_proj", *source.o)
    return layer, rotary


def swap_attention(model: nn.Module, kind: str, **options: Any) -> SwapReport:
    """Replace every self-attention module of a transformers ``model`` with attnkit ``kind``.

    Args:
        model: a transformers model (GPT-2, BERT, ViT, Llama / Mistral / Qwen2 / Gemma 2 style).
        kind: a name from :func:`attnkit.layers.list_attention_kinds` (``"local"``,
            ``"differential"``, ``"topk"``, ...).
        options: the kind's options (``window=64``, ``top_k=8``, ...); the model's attention
            dropout and softcap are passed unless given here.

    Returns:
        A :class:`SwapReport` naming the replaced modules and the kept and new parameters. The
        model (in place) also switches to ``attn_implementation="attnkit"`` for its masks.
    """
    register()
    found = [(n, m) for n, m in find_hf_attention_modules(model)
             if not getattr(m, "is_cross_attention", False)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no transformers self-attention modules to "
                         f"swap (modules whose forward uses ALL_ATTENTION_FUNCTIONS)")
    report = SwapReport(kind=kind, options=dict(options))
    for index, (name, module) in enumerate(found):
        source = _read_source(name, module)
        layer_idx = getattr(module, "layer_idx", None)
        layer_index = index if layer_idx is None else int(layer_idx)
        layer, rotary = _build(kind, source, layer_index, options)
        weight = next(module.parameters())
        layer = layer.to(device=weight.device, dtype=weight.dtype).train(module.training)
        after = getattr(module, "resid_dropout", None)
        swapped = SwappedAttention(layer, layer_index=layer_index,
                                   is_causal=bool(getattr(module, "is_causal", False)),
                                   rotary=rotary, after=after)
        parent_name, _, child = name.rpartition(".")
        model.get_submodule(parent_name).register_module(child, swapped)
        report.layers.append(name)
        if not report.kept:
            kept = [p for p in _PROJECTIONS if isinstance(getattr(layer, p), nn.Linear)]
            report.kept = [f"{p}.{w}" for p in kept
                           for w, _ in getattr(layer, p).named_parameters()]
            report.new = [n for n, _ in layer.named_parameters()
                          if n.split(".")[0] not in _PROJECTIONS]
    model.set_attn_implementation(IMPLEMENTATION)  # type: ignore[operator]
    return report
