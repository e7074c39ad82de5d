"""The GPT-2 comparison runs both models on the same configuration (needs transformers)."""

from __future__ import annotations

import pytest


def test_lm_throughput_compares_like_for_like() -> None:
    pytest.importorskip("transformers")
    from attnkit.bench.lm_throughput import LMBenchConfig, compare_lm_throughput

    report = compare_lm_throughput(LMBenchConfig(d_model=32, num_layers=1, num_heads=2,
                                                 seq_len=16, batch_size=2, vocab_size=50,
                                                 steps=1, rounds=1))
    # Same architecture, so the same number of parameters.
    assert report["parameters"]["attnkit"] == report["parameters"]["hf_gpt2"]
    assert all(v > 0 for v in report["tokens_per_s"].values())
