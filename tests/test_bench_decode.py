"""``attnkit bench decode``: the quick run end to end, the identical-tokens gate, the step clock
and the bound's weight count (needs transformers)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("transformers", reason="pip install 'attnkit[hf]' (transformers)")

from attnkit.bench.decode import (
    StepClock,
    check_identical,
    streamed_parameters,
    weight_streaming_seconds,
    weight_streaming_times,
)
from attnkit.cli import main


def test_quick_run_checks_times_and_writes_reports(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "decode", "--quick", "--threads", "1", "--prompts", "5",
                 "--new-tokens", "4", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "environment: cpu" in printed and "torch 2." in printed and "threads 1" in printed
    assert "weight-streaming bound" in printed and "the faster layout" in printed
    with (tmp_path / "decode.csv").open() as f:
        rows = list(csv.DictReader(f))
    cases = {(r["implementation"], r["batch"], r["prompt"]) for r in rows}
    assert cases == {(i, b, p) for i in ("attnkit", "hf_gpt2") for b in ("1", "2")
                     for p in ("5",)}
    for r in rows:
        rate, low, high = (float(r[c]) for c in ("tokens_per_s", "tokens_per_s_min",
                                                 "tokens_per_s_max"))
        assert 0 < low <= rate <= high
        assert float(r["share_of_bound"]) > 0 and float(r["prefill_s"]) > 0
        assert abs(float(r["share_of_bound"]) - rate / float(r["bound_tokens_per_s"])) < 1e-6
    table = (tmp_path / "decode.md").read_text()
    assert "| implementation | batch |" in table and "Weight-streaming bound" in table
    assert "output_major" in table and "input_major" in table  # both layouts' times
    assert (tmp_path / "decode.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_different_tokens_stop_the_run() -> None:
    prompt = torch.zeros(2, 3, dtype=torch.long)

    def ours(p: torch.Tensor, n: int) -> torch.Tensor:
        return torch.cat([p, torch.ones(p.shape[0], n, dtype=torch.long)], 1)

    def theirs(p: torch.Tensor, n: int) -> torch.Tensor:
        out = ours(p, n)
        out[1, 4] = 7
        return out

    check_identical({"attnkit": ours, "hf_gpt2": ours}, prompt, 2)
    with pytest.raises(RuntimeError, match=r"first at row 1, position 4 \(1 vs 7\)"):
        check_identical({"attnkit": ours, "hf_gpt2": theirs}, prompt, 2)


def test_step_clock_stamps_every_projection() -> None:
    head = nn.Linear(3, 3)
    with StepClock(head) as clock:
        for _ in range(4):
            head(torch.randn(1, 3))
    assert len(clock.stamps) == 5 and len(clock.steps_s) == 3
    assert clock.prefill_s >= 0 and all(s >= 0 for s in clock.steps_s)
    head(torch.randn(1, 3))
    assert len(clock.stamps) == 5, "the hook is removed on exit"


def test_the_bound_reads_each_weight_once() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from attnkit.hf import load

    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=2,
                                    n_head=2))
    ours = load(hf)
    total = sum(p.numel() for p in hf.parameters())  # tied lm_head is listed once
    assert streamed_parameters(ours) == total - 16 * 8  # minus the position table
    assert weight_streaming_seconds(4096, width=64, repeats=1) > 0


def test_the_bound_is_timed_in_both_layouts_and_keeps_the_faster() -> None:
    times = weight_streaming_times(4096, width=64, repeats=3)
    assert set(times) == {"output_major", "input_major"} and min(times.values()) > 0
    assert weight_streaming_seconds(4096, width=64, repeats=3) <= 2 * max(times.values())


def test_the_decoder_under_test_reads_input_major_weights() -> None:
    from attnkit.bench.decode import compared_models, quick_config
    from attnkit.models import weight_layout

    ours = compared_models(quick_config())["attnkit"]
    assert weight_layout(ours) == "input_major"
    assert ours.get_submodule("head").weight.stride() == (1, quick_config().vocab_size)


def test_profile_prints_the_decode_step_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "decode", "--quick", "--profile", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "'threads': 1" in printed
    assert "Self CPU" in printed and "aten::addmm" in printed  # the projections are there
    assert "profile with --threads 1" not in printed


def test_a_profile_with_two_threads_says_it_distorts(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "decode", "--quick", "--profile", "--threads", "2"]) == 0
    finally:
        torch.set_num_threads(threads)  # the suite runs one thread per worker
    printed = capsys.readouterr().out
    assert "'threads': 2" in printed and "Self CPU" in printed
    assert "torch.profiler slows OpenMP kernels" in printed and "--threads 1" in printed
