"""GPT-2 (Radford et al., 2019) <-> attnkit's :class:`~attnkit.models.DecoderLM`.

What maps to what (Hugging Face name -> attnkit name; ``h.i`` is block ``i``)::

    wte, wpe                       embedding.table, positions.table      (learned positions)
    h.i.ln_1, h.i.ln_2             stack.blocks.i.attention_norm, .mlp_norm   (pre-norm)
    h.i.attn.c_attn  (D, 3D)       attention.q_proj / k_proj / v_proj    (Conv1D: transposed)
    h.i.attn.c_proj                attention.out_proj
    h.i.mlp.c_fc, h.i.mlp.c_proj   mlp.up, mlp.down                      (GELU, tanh form)
    ln_f                           stack.final_norm
    lm_head                        head (tied to wte unless tie_word_embeddings is false)

GPT-2's ``Conv1D`` stores weights as (in, out), the transpose of ``nn.Linear``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnkit.hf.checkpoint import HFCheckpoint
from attnkit.hf.stack import stack_shape
from attnkit.hf.tensors import TensorTaker, require_options
from attnkit.models.builders import build_stack
from attnkit.models.config import ModelConfig
from attnkit.models.decoder import DecoderLM
from attnkit.models.embeddings import LearnedPositions, TokenEmbedding

__all__ = ["ARCHITECTURES", "from_hf", "to_hf"]

#: Hugging Face classes whose checkpoints load; the LM head is tied to wte when absent.
ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model")
#: activation_function -> GELU form.
_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh",
                "gelu": "none"}
_RULES: dict[str, tuple[Any, ...]] = {
    "activation_function": tuple(_ACTIVATIONS),
    "scale_attn_weights": (True,),
    "scale_attn_by_inverse_layer_idx": (False,),
    "add_cross_attention": (False,),
}


def _config(hf: dict[str, Any]) -> ModelConfig:
    dim = int(hf["n_embd"])
    return ModelConfig(
        family="decoder", d_model=dim, num_heads=int(hf["n_head"]), num_layers=int(hf["n_layer"]),
        d_ff=int(hf.get("n_inner") or 4 * dim), dropout=float(hf.get("resid_pdrop", 0.1)),
        attention_dropout=float(hf.get("attn_pdrop", 0.1)), norm="layernorm",
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        mlp="gelu_tanh" if _ACTIVATIONS[hf.get("activation_function", "gelu_new")] == "tanh"
        else "gelu",
        norm_first=True, attention="mha", positional="learned",
        max_length=int(hf.get("n_positions", 1024)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), bias=True)


def _check(checkpoint: HFCheckpoint) -> None:
    names = checkpoint.architectures
    if names and not set(names) & set(ARCHITECTURES):
        raise ValueError(f"GPT-2 checkpoint of class {names}: supported are {list(ARCHITECTURES)}"
                         f" (the language model); a task head would be lost")
    require_options(checkpoint.config, "GPT-2", _RULES)


def from_hf(checkpoint: HFCheckpoint) -> DecoderLM:
    """A GPT-2 checkpoint -> DecoderLM with the same weights (in eval mode)."""
    _check(checkpoint)
    hf = checkpoint.config
    config = _config(hf)
    t = TensorTaker(checkpoint.tensors, prefixes=("transformer.",),
                    ignore=(".attn.bias", ".attn.masked_bias"))
    wte = t.take("wte.weight")
    model = DecoderLM(
        embedding=TokenEmbedding(vocab_size=wte.shape[0], dim=config.d_model),
        positions=LearnedPositions(max_length=config.max_length, dim=config.d_model),
        stack=build_stack(config, num_layers=config.num_layers),
        dim=config.d_model, vocab_size=wte.shape[0], tie_embeddings=config.tie_embeddings,
        dropout=float(hf.get("embd_pdrop", 0.1)))
    d = config.d_model
    state: dict[str, Tensor] = {"embedding.table.weight": wte,
                                "positions.table": t.take("wpe.weight")}
    for i in range(config.num_layers):
        hf_block, block = f"h.{i}.", f"stack.blocks.{i}."
        qkv_w = t.take(hf_block + "attn.c_attn.weight").t()  # (3D, D)
        qkv_b = t.take(hf_block + "attn.c_attn.bias")  # (3D,)
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            state[f"{block}attention.{name}.weight"] = qkv_w[j * d:(j + 1) * d]
            state[f"{block}attention.{name}.bias"] = qkv_b[j * d:(j + 1) * d]
        for ours, theirs in (("attention.out_proj", "attn.c_proj"), ("mlp.up", "mlp.c_fc"),
                             ("mlp.down", "mlp.c_proj")):
            state[f"{block}{ours}.weight"] = t.take(f"{hf_block}{theirs}.weight").t()
            state[f"{block}{ours}.bias"] = t.take(f"{hf_block}{theirs}.bias")
        for ours, theirs in (("attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
            for p in ("weight", "bias"):
                state[f"{block}{ours}.{p}"] = t.take(f"{hf_block}{theirs}.{p}")
    for p in ("weight", "bias"):
        state[f"stack.final_norm.{p}"] = t.take(f"ln_f.{p}")
    if t.has("lm_head.weight"):
        head = t.take("lm_head.weight")
        if config.tie_embeddings and not torch.equal(head, wte):
            raise ValueError("GPT-2: tie_word_embeddings is true but lm_head differs from wte")
        state["head.weight"] = head
    elif not config.tie_embeddings:
        raise ValueError("GPT-2: tie_word_embeddings is false but the checkpoint has no lm_head")
    else:
        state["head.weight"] = wte  # the same Parameter: loading it once fills both
    t.finish("GPT-2")
    model.load_state_dict(state, strict=True)
    return model.eval()


def to_hf(model: DecoderLM) -> HFCheckpoint:
    """An attnkit DecoderLM shaped like GPT-2 -> a GPT2LMHeadModel checkpoint."""
    what = "GPT-2"
    if not isinstance(model.positions, LearnedPositions):
        raise ValueError(f"{what}: positions are {type(model.positions).__name__}; GPT-2 has "
                         f"learned absolute positions only")
    if model.embedding.multiplier != 1.0:
        raise ValueError(f"{what}: the token embedding is scaled by sqrt(D); GPT-2 does not")
    shape = stack_shape(model.stack, norm_first=True, what=what)
    d = shape.dim
    tied = model.head.weight is model.embedding.table.weight
    positions = model.positions.table.shape[0]
    config: dict[str, Any] = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": model.vocab_size, "n_positions": positions, "n_embd": d,
        "n_layer": shape.num_layers, "n_head": shape.num_heads, "n_inner": shape.hidden,
        "activation_function": "gelu_new" if shape.approximate == "tanh" else "gelu",
        "resid_pdrop": shape.dropout, "embd_pdrop": float(model.dropout.p),
        "attn_pdrop": shape.attention_dropout, "layer_norm_epsilon": shape.eps,
        "tie_word_embeddings": tied, "scale_attn_weights": True, "use_cache": True,
        "bos_token_id": None, "eos_token_id": None,  # attnkit LMs have no fixed special ids
    }
    ours = model.state_dict()
    out: dict[str, Tensor] = {"transformer.wte.weight": ours["embedding.table.weight"],
                              "transformer.wpe.weight": ours["positions.table"]}
    for i in range(shape.num_layers):
        hf_block, block = f"transformer.h.{i}.", f"stack.blocks.{i}."
        out[hf_block + "attn.c_attn.weight"] = torch.cat(
            [ours[f"{block}attention.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]).t()
        out[hf_block + "attn.c_attn.bias"] = torch.cat(
            [ours[f"{block}attention.{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")])
        for mine, theirs in (("attention.out_proj", "attn.c_proj"), ("mlp.up", "mlp.c_fc"),
                             ("mlp.down", "mlp.c_proj")):
            out[f"{hf_block}{theirs}.weight"] = ours[f"{block}{mine}.weight"].t()
            out[f"{hf_block}{theirs}.bias"] = ours[f"{block}{mine}.bias"]
        for mine, theirs in (("attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
            for p in ("weight", "bias"):
                out[f"{hf_block}{theirs}.{p}"] = ours[f"{block}{mine}.{p}"]
    for p in ("weight", "bias"):
        out[f"transformer.ln_f.{p}"] = ours[f"stack.final_norm.{p}"]
    if not tied:
        out["lm_head.weight"] = ours["head.weight"]
    return HFCheckpoint(config=config, tensors={k: v.contiguous() for k, v in out.items()})
