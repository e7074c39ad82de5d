"""Explain attention: capture, rollout, flow, gradient relevance, faithfulness, PNG and HTML views.

    from attnkit.explain import capture, attention_rollout
    with capture(model) as cap:
        model(x)
    rollout = attention_rollout([r.weights for r in cap.self_attention()])   # (B, L, L)
"""

from attnkit.explain.capture import AttentionCapture, AttentionRecord, capture
from attnkit.explain.flow import attention_flow
from attnkit.explain.gradients import input_x_gradient, target_scores
from attnkit.explain.metrics import (
    auc,
    cascading_randomization,
    perturbation_curve,
    spearman,
)
from attnkit.explain.relevance import Relevance, gradient_relevance, relevance_from_steps
from attnkit.explain.rollout import attention_rollout

__all__ = ["AttentionCapture", "AttentionRecord", "Relevance", "attention_flow",
           "attention_rollout", "auc", "capture", "cascading_randomization",
           "gradient_relevance", "input_x_gradient", "perturbation_curve",
           "relevance_from_steps", "spearman", "target_scores"]
