"""Attention layers: every kind behind one interface and one registry."""

from attnkit.layers.base import AttentionLayer, AttentionProbe, collect_auxiliary_losses
from attnkit.layers.kv_cache import KVCache, RollingKVCache, StaticKVCache
from attnkit.layers.multihead import MultiHeadAttention
from attnkit.layers.registry import build_attention, list_attention_kinds, register_attention

register_attention("mha", "standard multi-head softmax attention with GQA/MQA, RoPE, ALiBi "
                   "(Vaswani et al., 2017)")(MultiHeadAttention)

# -- attention kinds (issue 3) ------------------------------------------------------------------
from attnkit.layers.adaptive_span import AdaptiveSpanAttention  # noqa: E402
from attnkit.layers.differential import DifferentialAttention  # noqa: E402
from attnkit.layers.gated import GatedAttention  # noqa: E402
from attnkit.layers.kernelized import RecurrentState  # noqa: E402
from attnkit.layers.linear import LinearAttention  # noqa: E402
from attnkit.layers.linformer import LinformerAttention  # noqa: E402
from attnkit.layers.local import LocalAttention  # noqa: E402
from attnkit.layers.nystrom import NystromAttention  # noqa: E402
from attnkit.layers.performer import PerformerAttention  # noqa: E402
from attnkit.layers.ssmax import ScalableSoftmaxAttention  # noqa: E402
from attnkit.layers.topk import TopKAttention  # noqa: E402

register_attention("gated", "MHA with a sigmoid gate from the input on each head's output "
                   "(Qiu et al., 2025)")(GatedAttention)
register_attention("differential", "difference of two softmax maps with learned lambda and "
                   "per-head RMSNorm (Ye et al., 2024)")(DifferentialAttention)
register_attention("adaptive_span", "learned soft span per head, compute limited to the span, "
                   "span penalty loss (Sukhbaatar et al., 2019)")(AdaptiveSpanAttention)
register_attention("topk", "each query keeps its k largest scores, query-chunked "
                   "(Zhao et al., 2019)")(TopKAttention)
register_attention("ssmax", "scalable softmax: logits times learned s * log(keys seen) "
                   "(Nakanishi, 2025)")(ScalableSoftmaxAttention)
register_attention("local", "sliding-window attention through the engine's masks, linear in "
                   "L")(LocalAttention)
register_attention("linear", "linear attention with elu+1 features, causal chunks and O(1) "
                   "recurrent decoding (Katharopoulos et al., 2020)")(LinearAttention)
register_attention("performer", "FAVOR+ positive orthogonal random features "
                   "(Choromanski et al., 2021)")(PerformerAttention)
register_attention("linformer", "learned length projections of keys/values, non-causal "
                   "(Wang et al., 2020)")(LinformerAttention)
register_attention("nystrom", "Nystrom landmarks with iterative pseudo-inverse "
                   "(Xiong et al., 2021)")(NystromAttention)

__all__ = ["AdaptiveSpanAttention", "AttentionLayer", "AttentionProbe", "DifferentialAttention",
           "GatedAttention", "KVCache", "LinearAttention", "LinformerAttention", "LocalAttention",
           "MultiHeadAttention", "NystromAttention", "PerformerAttention", "RecurrentState",
           "RollingKVCache", "ScalableSoftmaxAttention", "StaticKVCache", "TopKAttention",
           "build_attention", "collect_auxiliary_losses", "list_attention_kinds",
           "register_attention"]
