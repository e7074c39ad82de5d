"""ViT (Dosovitskiy et al., 2021) <-> attnkit's ViT :class:`~attnkit.models.TransformerClassifier`.

What maps to what (Hugging Face name -> attnkit name; ``L.i`` = ``encoder.layer.i``)::

    embeddings.patch_embeddings.projection  embed.proj                 (PatchEmbedding)
    embeddings.cls_token                    cls_token                  (pooling="cls")
    embeddings.position_embeddings          positions.table            (learned, N + 1 rows)
    L.i.layernorm_before, layernorm_after   stack.blocks.i.attention_norm, mlp_norm (pre-norm)
    L.i.attention.attention.query/key/value attention.q_proj / k_proj / v_proj
    L.i.attention.output.dense              attention.out_proj
    L.i.intermediate.dense, output.dense    mlp.up, mlp.down           (GELU, erf form)
    layernorm                               stack.final_norm
    classifier                              head                       (ViTForImageClassification)
    pooler.dense                            head.pooler                (ViTModel with a pooler)

Images must have the checkpoint's ``image_size`` (no position interpolation).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from attnkit.hf.bert import ENCODER_ACTIVATIONS
from attnkit.hf.checkpoint import HFCheckpoint
from attnkit.hf.stack import stack_shape
from attnkit.hf.tensors import NamePairs, TensorTaker, affine_pairs, block_pairs, require_options
from attnkit.models.builders import build_stack
from attnkit.models.classifier import ClassifierHead, TransformerClassifier
from attnkit.models.config import ModelConfig
from attnkit.models.embeddings import LearnedPositions
from attnkit.models.vit import PatchEmbedding

__all__ = ["ARCHITECTURES", "from_hf", "to_hf"]

ARCHITECTURES = ("ViTForImageClassification", "ViTModel")
_RULES: dict[str, tuple[Any, ...]] = {
    "hidden_act": tuple(ENCODER_ACTIVATIONS),
    "qkv_bias": (True,),
    "pooler_act": ("tanh",),
}
_BLOCK: NamePairs = [
    ("attention.q_proj", "attention.attention.query"),
    ("attention.k_proj", "attention.attention.key"),
    ("attention.v_proj", "attention.attention.value"),
    ("attention.out_proj", "attention.output.dense"), ("attention_norm", "layernorm_before"),
    ("mlp.up", "intermediate.dense"), ("mlp.down", "output.dense"),
    ("mlp_norm", "layernorm_after"),
]


def _pairs(num_layers: int, *, pooler: bool, classifier: bool, prefix: str) -> NamePairs:
    pairs = affine_pairs([("embed.proj", f"{prefix}embeddings.patch_embeddings.projection")])
    pairs += block_pairs(_BLOCK, num_layers=num_layers, ours="stack.blocks.{i}.",
                         theirs=prefix + "encoder.layer.{i}.")
    pairs += affine_pairs([("stack.final_norm", f"{prefix}layernorm")])
    if pooler:
        pairs += affine_pairs([("head.pooler", f"{prefix}pooler.dense")])
    if classifier:
        pairs += affine_pairs([("head", "classifier")])
    return pairs


def _size(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, list | tuple) else (int(value),) * 2


def from_hf(checkpoint: HFCheckpoint) -> TransformerClassifier:
    """A ViT checkpoint -> TransformerClassifier with the same weights (in eval mode)."""
    names = checkpoint.architectures
    if names and not set(names) & set(ARCHITECTURES):
        raise ValueError(f"ViT checkpoint of class {names}: supported are {list(ARCHITECTURES)}")
    hf = checkpoint.config
    require_options(hf, "ViT", _RULES)
    height, width = _size(hf.get("image_size", 224))
    patch = int(hf.get("patch_size", 16))
    if height % patch or width % patch:
        raise ValueError(f"ViT: image_size {height}x{width} is not a multiple of patch {patch}")
    num_tokens = (height // patch) * (width // patch) + 1
    config = ModelConfig(
        family="vit", d_model=int(hf["hidden_size"]), num_heads=int(hf["num_attention_heads"]),
        num_layers=int(hf["num_hidden_layers"]), d_ff=int(hf["intermediate_size"]),
        dropout=float(hf.get("hidden_dropout_prob", 0.0)),
        attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.0)),
        norm="layernorm", norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        mlp=ENCODER_ACTIVATIONS[hf.get("hidden_act", "gelu")], norm_first=True, attention="mha",
        positional="learned", max_length=num_tokens, pooling="cls", patch_size=patch,
        patch_stem="linear", bias=True)
    t = TensorTaker(checkpoint.tensors, ignore=(".mask_token",))
    prefix = "vit." if any(k.startswith("vit.") for k in t.tensors) else ""
    has_pooler = t.has(f"{prefix}pooler.dense.weight")
    has_classifier = t.has("classifier.weight")
    d = config.d_model
    head: nn.Module = nn.Identity()
    num_classes = d
    if has_classifier:
        num_classes = t.tensors["classifier.weight"].shape[0]
        head = nn.Linear(d, num_classes)
    elif has_pooler:
        head = ClassifierHead(pooler=nn.Linear(d, d), classifier=None)
    channels = int(hf.get("num_channels", 3))
    model = TransformerClassifier(
        embed=PatchEmbedding(channels=channels, patch_size=patch, dim=d,
                             image_size=(height, width)),
        positions=LearnedPositions(max_length=num_tokens, dim=d),
        stack=build_stack(config, num_layers=config.num_layers, max_length=num_tokens),
        num_classes=num_classes, dim=d, pooling="cls", dropout=config.dropout, head=head)
    state = {ours: t.take(theirs) for ours, theirs in _pairs(
        config.num_layers, pooler=has_pooler, classifier=has_classifier, prefix=prefix)}
    state["cls_token"] = t.take(f"{prefix}embeddings.cls_token")  # (1, 1, D)
    state["positions.table"] = t.take(f"{prefix}embeddings.position_embeddings")[0]  # (N+1, D)
    t.finish("ViT")
    model.load_state_dict(state, strict=True)
    return model.eval()


def to_hf(model: TransformerClassifier) -> HFCheckpoint:
    """An attnkit ViT (linear patches, class token, learned positions, pre-norm LayerNorm)
    -> a ViTForImageClassification (or ViTModel) folder."""
    what = "ViT"
    embed = model.embed
    if not (isinstance(embed, PatchEmbedding) and isinstance(model.positions, LearnedPositions)
            and model.pooling == "cls" and model.cls_token is not None):
        raise ValueError(f"{what}: needs linear patches (patch_stem='linear'), learned positions "
                         f"and a class token (pooling='cls'); got {type(embed).__name__}, "
                         f"{type(model.positions).__name__}, pooling={model.pooling!r}")
    shape = stack_shape(model.stack, norm_first=True, what=what)
    patches = model.positions.table.shape[0] - 1
    side = math.isqrt(patches)
    if embed.image_size is not None:
        height, width = embed.image_size
    elif side * side == patches:
        height = width = side * embed.patch_size
    else:
        raise ValueError(f"{what}: {patches} patches do not form a square grid and the patch "
                         f"embedding does not record its image_size")
    head = model.head
    pooler = isinstance(head, ClassifierHead)
    classifier = isinstance(head, nn.Linear)
    if not (pooler or classifier or isinstance(head, nn.Identity)):
        raise ValueError(f"{what}: head {type(head).__name__} is not a Linear classifier")
    ours = model.state_dict()
    prefix = "vit." if classifier else ""
    tensors = {theirs: ours[mine] for mine, theirs in _pairs(
        shape.num_layers, pooler=pooler, classifier=classifier, prefix=prefix)}
    tensors[f"{prefix}embeddings.cls_token"] = ours["cls_token"]
    tensors[f"{prefix}embeddings.position_embeddings"] = ours["positions.table"][None]
    config: dict[str, Any] = {
        "architectures": ["ViTForImageClassification" if classifier else "ViTModel"],
        "model_type": "vit", "hidden_size": shape.dim, "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads, "intermediate_size": shape.hidden,
        "hidden_act": "gelu" if shape.approximate == "none" else "gelu_new",
        "hidden_dropout_prob": shape.dropout,
        "attention_probs_dropout_prob": shape.attention_dropout, "layer_norm_eps": shape.eps,
        "image_size": height if height == width else [height, width],
        "patch_size": embed.patch_size, "num_channels": embed.proj.in_channels,
        "qkv_bias": True,
    }
    if classifier and isinstance(head, nn.Linear):
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(head.out_features)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(head.out_features)}
    return HFCheckpoint(config=config, tensors={k: v.contiguous() for k, v in tensors.items()})
