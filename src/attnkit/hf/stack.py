"""What an attnkit TransformerStack must look like to be written as a GPT-2, BERT or ViT stack.

The three architectures share one block shape: plain multi-head attention with biases (no GQA,
RoPE, ALiBi, QK-norm or softcap), a GELU MLP with biases, and LayerNorms with biases. Anything
else cannot be expressed in their configs, so it is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from attnkit.layers.multihead import MultiHeadAttention
from attnkit.models.blocks import TransformerBlock, TransformerStack
from attnkit.models.mlp import GeluMLP

__all__ = ["StackShape", "stack_shape"]


@dataclass(frozen=True)
class StackShape:
    """The numbers a Hugging Face config needs about a stack."""

    dim: int
    num_heads: int
    num_layers: int
    hidden: int  # MLP hidden width
    eps: float  # LayerNorm epsilon (one for all norms)
    approximate: str  # GELU: "none" (erf) or "tanh"
    dropout: float  # residual dropout
    attention_dropout: float


def _layer_norm(module: nn.Module, where: str, what: str) -> float:
    if type(module) is not nn.LayerNorm or module.bias is None or not module.elementwise_affine:
        raise ValueError(f"{what}: {where} is {type(module).__name__}; only LayerNorm with "
                         f"weight and bias can be written")
    return float(module.eps)


def stack_shape(stack: TransformerStack, *, norm_first: bool, what: str) -> StackShape:
    """Check every block of ``stack`` fits ``what`` (e.g. "GPT-2") and return its numbers."""
    shapes: set[tuple[int, int, int, str, float, float]] = set()
    epsilons: set[float] = set()
    for i, block in enumerate(stack.blocks):
        if not isinstance(block, TransformerBlock):
            raise ValueError(f"{what}: block {i} is {type(block).__name__}, not a TransformerBlock")
        attention, mlp = block.attention, block.mlp
        if type(attention) is not MultiHeadAttention:
            raise ValueError(f"{what}: layer {i} attention is {type(attention).__name__}; only "
                             f"the plain 'mha' kind exists in {what} checkpoints")
        lay = attention.layout
        problems = [name for name, bad in (
            ("grouped key/value heads", lay.num_kv_heads != lay.num_heads),
            ("head_dim * num_heads != dim", lay.head_dim * lay.num_heads != lay.dim),
            ("rope", attention.rope is not None), ("alibi", attention.use_alibi),
            ("qk_norm", attention.q_norm is not None), ("softcap", attention.softcap is not None),
            ("projections without bias", attention.q_proj.bias is None),
        ) if bad]
        if problems:
            raise ValueError(f"{what}: layer {i} attention uses {', '.join(problems)}, which "
                             f"{what} cannot express")
        if type(mlp) is not GeluMLP or mlp.up.bias is None:
            raise ValueError(f"{what}: layer {i} MLP is {type(mlp).__name__}; only the GELU MLP "
                             f"with biases can be written")
        if block.norm_first != norm_first:
            raise ValueError(f"{what}: layer {i} is {'pre' if block.norm_first else 'post'}-norm; "
                             f"{what} is {'pre' if norm_first else 'post'}-norm")
        if block.cross_attention is not None:
            raise ValueError(f"{what}: layer {i} has cross-attention, which is not written")
        epsilons.add(_layer_norm(block.attention_norm, f"layer {i} attention norm", what))
        epsilons.add(_layer_norm(block.mlp_norm, f"layer {i} MLP norm", what))
        shapes.add((lay.dim, lay.num_heads, mlp.up.out_features, mlp.approximate,
                    float(block.dropout.p), float(attention.dropout)))
    if norm_first:
        epsilons.add(_layer_norm(stack.final_norm, "the final norm", what))
    if len(shapes) != 1 or len(epsilons) != 1:
        raise ValueError(f"{what}: every layer must share width, heads, MLP width, activation, "
                         f"dropout and norm epsilon; found {sorted(map(str, shapes))}, "
                         f"eps {sorted(epsilons)}")
    dim, heads, hidden, approximate, dropout, attention_dropout = shapes.pop()
    return StackShape(dim=dim, num_heads=heads, num_layers=len(stack.blocks), hidden=hidden,
                      eps=epsilons.pop(), approximate=approximate, dropout=dropout,
                      attention_dropout=attention_dropout)
