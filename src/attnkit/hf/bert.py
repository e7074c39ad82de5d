"""BERT (Devlin et al., 2019) <-> attnkit's encoder :class:`~attnkit.models.TransformerClassifier`.

What maps to what (Hugging Face name -> attnkit name; ``L.i`` = ``encoder.layer.i``)::

    embeddings.word_embeddings          embed.tokens.table
    embeddings.token_type_embeddings    embed.segments              (token_types, default 0)
    embeddings.position_embeddings      positions.positions.table   (learned, absolute)
    embeddings.LayerNorm                positions.norm              (EmbeddingNorm)
    L.i.attention.self.query/key/value  stack.blocks.i.attention.q_proj / k_proj / v_proj
    L.i.attention.output.dense          attention.out_proj
    L.i.attention.output.LayerNorm      attention_norm              (post-norm blocks)
    L.i.intermediate.dense, output.dense  mlp.up, mlp.down          (GELU, erf form)
    L.i.output.LayerNorm                mlp_norm
    pooler.dense, classifier            head.pooler, head.classifier (pooling="first": [CLS])

``BertForSequenceClassification`` -> logits (B, C); ``BertModel`` -> the pooled output (B, D)
(or the [CLS] state without a pooler); ``hidden_states(...)`` gives the last layer (B, L, D).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import nn

from attnkit.hf.checkpoint import HFCheckpoint
from attnkit.hf.stack import stack_shape
from attnkit.hf.tensors import NamePairs, TensorTaker, affine_pairs, block_pairs, require_options
from attnkit.models.builders import build_stack
from attnkit.models.classifier import ClassifierHead, TransformerClassifier
from attnkit.models.config import ModelConfig
from attnkit.models.embeddings import EmbeddingNorm, LearnedPositions
from attnkit.models.encoder import TokenInput

__all__ = ["ARCHITECTURES", "from_hf", "to_hf"]

ARCHITECTURES = ("BertForSequenceClassification", "BertModel")
#: Pretraining checkpoints (e.g. bert-base-uncased): their encoder loads, their ``cls.*``
#: pretraining heads (masked LM, next sentence) are left out, as BertModel.from_pretrained does.
PRETRAINING = ("BertForPreTraining", "BertForMaskedLM", "BertForNextSentencePrediction")
ENCODER_ACTIVATIONS: dict[str, Literal["gelu", "gelu_tanh"]] = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_RULES: dict[str, tuple[Any, ...]] = {
    "hidden_act": tuple(ENCODER_ACTIVATIONS),
    "position_embedding_type": ("absolute",),
    "is_decoder": (False,),
    "add_cross_attention": (False,),
    "problem_type": (None, "single_label_classification", "multi_label_classification",
                     "regression"),
}
_BLOCK: NamePairs = [
    ("attention.q_proj", "attention.self.query"), ("attention.k_proj", "attention.self.key"),
    ("attention.v_proj", "attention.self.value"), ("attention.out_proj", "attention.output.dense"),
    ("attention_norm", "attention.output.LayerNorm"), ("mlp.up", "intermediate.dense"),
    ("mlp.down", "output.dense"), ("mlp_norm", "output.LayerNorm"),
]


def _pairs(num_layers: int, *, pooler: bool, classifier: bool, prefix: str) -> NamePairs:
    pairs = [("embed.tokens.table.weight", f"{prefix}embeddings.word_embeddings.weight"),
             ("embed.segments.weight", f"{prefix}embeddings.token_type_embeddings.weight"),
             ("positions.positions.table", f"{prefix}embeddings.position_embeddings.weight")]
    pairs += affine_pairs([("positions.norm", f"{prefix}embeddings.LayerNorm")])
    pairs += block_pairs(_BLOCK, num_layers=num_layers, ours="stack.blocks.{i}.",
                         theirs=prefix + "encoder.layer.{i}.")
    if pooler:
        pairs += affine_pairs([("head.pooler", f"{prefix}pooler.dense")])
    if classifier:
        pairs += affine_pairs([("head.classifier", "classifier")])
    return pairs


def _config(hf: dict[str, Any]) -> ModelConfig:
    return ModelConfig(
        family="encoder", d_model=int(hf["hidden_size"]), num_heads=int(hf["num_attention_heads"]),
        num_layers=int(hf["num_hidden_layers"]), d_ff=int(hf["intermediate_size"]),
        dropout=float(hf.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
        norm="layernorm", norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        mlp=ENCODER_ACTIVATIONS[hf.get("hidden_act", "gelu")], norm_first=False, attention="mha",
        positional="learned", max_length=int(hf.get("max_position_embeddings", 512)),
        pooling="first", bias=True)


def from_hf(checkpoint: HFCheckpoint) -> TransformerClassifier:
    """A BERT checkpoint -> TransformerClassifier with the same weights (in eval mode)."""
    names = checkpoint.architectures
    if names and not set(names) & set(ARCHITECTURES + PRETRAINING):
        raise ValueError(f"BERT checkpoint of class {names}: supported are {list(ARCHITECTURES)}"
                         f" and, as the bare encoder, {list(PRETRAINING)}")
    hf = checkpoint.config
    require_options(hf, "BERT", _RULES)
    config = _config(hf)
    tensors = checkpoint.tensors
    if set(names) & set(PRETRAINING):
        tensors = {k: v for k, v in tensors.items() if not k.startswith("cls.")}
    t = TensorTaker(tensors, ignore=(".position_ids", ".token_type_ids"))
    bare = not any(k.startswith("bert.") for k in t.tensors)
    prefix = "" if bare else "bert."
    has_pooler = t.has(f"{prefix}pooler.dense.weight")
    has_classifier = t.has("classifier.weight")
    words = t.tensors[f"{prefix}embeddings.word_embeddings.weight"]
    segments = t.tensors[f"{prefix}embeddings.token_type_embeddings.weight"]
    d, eps = config.d_model, config.norm_eps
    head: nn.Module = nn.Identity()
    num_classes = d
    if has_classifier:
        if not has_pooler:
            raise ValueError("BERT: a classifier without a pooler is not a BERT checkpoint")
        num_classes = t.tensors["classifier.weight"].shape[0]
        head = ClassifierHead(pooler=nn.Linear(d, d), classifier=nn.Linear(d, num_classes),
                              dropout=float(hf.get("classifier_dropout")
                                            or config.dropout))
    elif has_pooler:
        head = ClassifierHead(pooler=nn.Linear(d, d), classifier=None)
    model = TransformerClassifier(
        embed=TokenInput(vocab_size=words.shape[0], dim=d, pad_id=int(hf.get("pad_token_id") or 0),
                         segments=segments.shape[0]),
        positions=EmbeddingNorm(positions=LearnedPositions(max_length=config.max_length, dim=d),
                                norm=nn.LayerNorm(d, eps=eps)),
        stack=build_stack(config, num_layers=config.num_layers),
        num_classes=num_classes, dim=d, pooling="first", dropout=config.dropout, head=head)
    state = {ours: t.take(theirs) for ours, theirs in _pairs(
        config.num_layers, pooler=has_pooler, classifier=has_classifier, prefix=prefix)}
    t.finish("BERT")
    model.load_state_dict(state, strict=True)
    return model.eval()





def to_hf(model: TransformerClassifier) -> HFCheckpoint:
    """An attnkit BERT-shaped encoder -> a BertForSequenceClassification (or BertModel) folder."""
    what = "BERT"
    embed, positions = model.embed, model.positions
    if not (isinstance(embed, TokenInput) and isinstance(positions, EmbeddingNorm)
            and isinstance(positions.positions, LearnedPositions)
            and type(positions.norm) is nn.LayerNorm and model.pooling == "first"):
        raise ValueError(f"{what}: the model needs token input, learned positions with an "
                         f"embedding LayerNorm and first-token pooling (as attnkit.hf.load builds "
                         f"from BERT); attnkit's own encoder classifier has a different shape")
    if embed.tokens.multiplier != 1.0 or embed.segments is None:
        raise ValueError(f"{what}: the token embedding must be unscaled with a segment table")
    shape = stack_shape(model.stack, norm_first=False, what=what)
    head = model.head
    if isinstance(head, ClassifierHead):
        pooler, classifier = True, head.classifier is not None
    elif isinstance(head, nn.Identity):
        pooler = classifier = False
    else:
        raise ValueError(f"{what}: head {type(head).__name__} is not BERT's pooler + classifier")
    ours = model.state_dict()
    prefix = "bert." if classifier else ""
    tensors = {theirs: ours[mine] for mine, theirs in _pairs(
        shape.num_layers, pooler=pooler, classifier=classifier, prefix=prefix)}
    config: dict[str, Any] = {
        "architectures": ["BertForSequenceClassification" if classifier else "BertModel"],
        "model_type": "bert", "vocab_size": embed.tokens.table.num_embeddings,
        "hidden_size": shape.dim, "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads, "intermediate_size": shape.hidden,
        "hidden_act": "gelu" if shape.approximate == "none" else "gelu_new",
        "hidden_dropout_prob": shape.dropout,
        "attention_probs_dropout_prob": shape.attention_dropout,
        "max_position_embeddings": positions.positions.table.shape[0],
        "type_vocab_size": embed.segments.num_embeddings, "layer_norm_eps": shape.eps,
        "pad_token_id": embed.pad_id, "position_embedding_type": "absolute",
    }
    if not shape.eps == float(positions.norm.eps):
        raise ValueError(f"{what}: the embedding norm eps {positions.norm.eps} differs from the "
                         f"blocks' {shape.eps}; BERT has one layer_norm_eps")
    if classifier and isinstance(head, ClassifierHead) and head.classifier is not None:
        labels = head.classifier.out_features
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
        config["classifier_dropout"] = float(head.dropout.p)
    return HFCheckpoint(config=config, tensors={k: v.contiguous() for k, v in tensors.items()})
