"""Explain attention: capture, rollout, flow, gradient relevance, faithfulness, PNG and HTML views.

    from attnkit.explain import capture, attention_rollout
    with capture(model) as cap:
        model(x)
    rollout = attention_rollout([r.dense_weights() for r in cap.self_attention()])  # (B, L, L)

    write_html("report.html", **build_report(model, example_from_task(model, task, x, y)))
    explain(model, "some text", tokenizer=tokenizer).save("report.html")   # one call
"""

from attnkit.explain.capture import AttentionCapture, AttentionRecord, capture
from attnkit.explain.commands import explain_run, write_demo_report
from attnkit.explain.examples import example_from_inputs, example_from_task
from attnkit.explain.flow import attention_flow
from attnkit.explain.gradients import input_x_gradient, target_scores
from attnkit.explain.metrics import (
    auc,
    cascading_randomization,
    perturbation_curve,
    spearman,
)
from attnkit.explain.one_call import Report, explain, tokenize
from attnkit.explain.relevance import Relevance, gradient_relevance, relevance_from_steps
from attnkit.explain.render_html import write_html
from attnkit.explain.report import ExplainInput, build_report
from attnkit.explain.rollout import attention_rollout

__all__ = ["AttentionCapture", "AttentionRecord", "ExplainInput", "Relevance", "Report",
           "attention_flow", "attention_rollout", "auc", "build_report", "capture",
           "cascading_randomization", "example_from_inputs", "example_from_task", "explain",
           "explain_run", "gradient_relevance", "input_x_gradient",
           "perturbation_curve", "relevance_from_steps", "spearman", "target_scores", "tokenize",
           "write_demo_report", "write_html"]
