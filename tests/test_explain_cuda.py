"""Capture, dL/dA and relevance on a CUDA device (fused GPU kernels); skipped without CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

from attnkit import masks
from attnkit.explain import attention_rollout, capture, cascading_randomization, gradient_relevance
from attnkit.explain.toy import ToyClassifier, ToySeq2Seq
from attnkit.layers import MultiHeadAttention
from test_explain_capture import float64_weights
from test_explain_views import embedded_data, make_run

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_capture_and_weight_gradients(causal: bool, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = MultiHeadAttention(64, 4, num_kv_heads=2).eval()
    x = torch.randn(2, 33, 64)
    cotangent = torch.randn(2, 33, 64)
    mask = masks.causal() if causal else None
    gpu = copy.deepcopy(layer).cuda().to(dtype)
    with capture(gpu, gradients=True) as cap:
        (gpu(x.cuda().to(dtype), mask=mask) * cotangent.cuda().to(dtype)).sum().backward()
    want, v = float64_weights(layer, x, causal=causal)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(cap[0].dense_weights().cpu().double(), want, atol=tol, rtol=tol)
    weights = want.clone().requires_grad_(True)
    out = (weights @ v).transpose(1, 2).reshape(2, 33, -1)
    y = out @ layer.out_proj.weight.detach().double().T + layer.out_proj.bias.detach().double()
    (y * cotangent.double()).sum().backward()
    assert weights.grad is not None
    grad_tol = 5e-2 if dtype == torch.bfloat16 else 1e-3
    torch.testing.assert_close(cap[0].dense_grad().cpu().double(), weights.grad,
                               atol=grad_tol, rtol=grad_tol)


def test_cuda_relevance_and_rollout_match_cpu() -> None:
    torch.manual_seed(0)
    model = ToySeq2Seq(dim=32, heads=4).eval()
    source, target = torch.randint(0, 20, (2, 9)), torch.randint(0, 20, (2, 7))
    cpu = gradient_relevance(model, source, target)
    gpu_model = copy.deepcopy(model).cuda()
    gpu = gradient_relevance(gpu_model, source.cuda(), target.cuda())
    assert gpu.cross is not None and cpu.cross is not None
    torch.testing.assert_close(gpu.cross.cpu(), cpu.cross, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(gpu.source.cpu(), cpu.source, atol=1e-4, rtol=1e-3)
    with torch.no_grad(), capture(gpu_model) as cap:
        gpu_model(source.cuda(), target.cuda())
    rollout = attention_rollout([r.dense_weights() for r in cap.self_attention()[:2]])
    assert rollout.is_cuda
    torch.testing.assert_close(rollout.sum(-1).cpu(), torch.ones(2, 9))


def test_cuda_cascading_randomization_runs_on_device() -> None:
    model = ToyClassifier(dim=32, heads=4).cuda().eval()
    tokens = torch.randint(0, 20, (4, 10), device="cuda")
    steps = cascading_randomization(
        model, lambda m: gradient_relevance(m, tokens).source[:, 0, 1:])
    assert len(steps) == 5 and all(-1 <= s.spearman <= 1 for s in steps)


def test_cuda_explain_and_faithfulness_of_a_run(tmp_path) -> None:
    """`attnkit explain/faithfulness RUN --device cuda`: the report equals the CPU one."""
    from attnkit.explain.commands import explain_run, faithfulness_report

    run = make_run(tmp_path)
    pages = {d: embedded_data(explain_run(run, input_spec="test:1", device=d,
                                          out=tmp_path / f"{d}.html").read_text())
             for d in ("cpu", "cuda")}
    assert pages["cuda"]["labels"] == pages["cpu"]["labels"]
    assert pages["cuda"]["image"]["grid"] == pages["cpu"]["image"]["grid"]
    table = faithfulness_report(run, examples=6, steps=4, device="cuda")
    assert "| attention rollout |" in table and "random order" in table
