"""Decoding paths checked by value: seq2seq greedy decoding and eos, ``attnkit generate`` on a
seq2seq run, and streaming generation with a rolling cache against a full-sequence pass.

(``DecoderLM.generate``'s eos, top-p and temperature are tested with the generation rewrite.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from attnkit import masks
from attnkit.cli import main
from attnkit.models import build_decoder_lm, build_seq2seq, get_preset
from attnkit.models.seq2seq import Seq2SeqTransformer

FAST = ["--no-progress", "--set", "train.num_threads=1", "--set", "train.tensorboard=false"]
BOS, NEVER = 1, 39  # NEVER: a token id the greedy decoder below never produces


def _seq2seq() -> Seq2SeqTransformer:
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("tiny"), num_layers=1, num_decoder_layers=2)
    return build_seq2seq(config, source_vocab_size=30, target_vocab_size=40).eval()


def _first(row: list[int], token: int) -> int | None:
    return row.index(token) if token in row else None


@pytest.mark.parametrize("use_cache", [True, False])
def test_seq2seq_greedy_decode_stops_at_eos(use_cache: bool) -> None:
    """With eos set to a token one sequence emits mid-way, that sequence copies the free run up
    to its first eos and is eos-filled after; decoding ends once every sequence is done."""
    model = _seq2seq()
    source = torch.randint(3, 30, (3, 6), generator=torch.Generator().manual_seed(3))
    free = model.greedy_decode(source, bos_id=BOS, eos_id=NEVER, max_length=12,
                               use_cache=use_cache)
    assert free.shape == (3, 13) and not (free[:, 1:] == NEVER).any()
    # eos := the token sequence 0 emits at step 3: it must stop there.
    eos = int(free[0, 3])
    out = model.greedy_decode(source, bos_id=BOS, eos_id=eos, max_length=12,
                              use_cache=use_cache)
    stops = [_first(free[b, 1:].tolist(), eos) for b in range(3)]
    assert stops[0] is not None and stops[0] <= 2
    expected_length = 13 if None in stops else 2 + max(s for s in stops if s is not None)
    assert out.shape == (3, expected_length)
    for b, stop in enumerate(stops):
        upto = expected_length if stop is None else stop + 2  # bos + tokens up to the eos
        assert torch.equal(out[b, :upto], free[b, :upto])
        assert (out[b, upto:] == eos).all(), f"sequence {b} kept going after its eos"


def test_seq2seq_greedy_decode_ends_when_every_sequence_is_done() -> None:
    model = _seq2seq()
    source = torch.randint(3, 30, (2, 5), generator=torch.Generator().manual_seed(4))
    free = model.greedy_decode(source, bos_id=BOS, eos_id=NEVER, max_length=8)
    eos = int(free[0, 1])  # the first token of sequence 0
    out = model.greedy_decode(source, bos_id=BOS, eos_id=eos, max_length=8)
    stop1 = _first(free[1, 1:].tolist(), eos)
    assert out.shape[1] == (9 if stop1 is None else max(2, stop1 + 2))
    assert (out[0, 1:] == eos).all()


def test_generate_on_a_seq2seq_run_prints_the_greedy_translation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`attnkit generate` on a seq2seq run: the prompt is encoded, decoded greedily from bos to
    eos and the eos stripped; the same as calling the model directly."""
    from attnkit.train.run import load_run

    assert main(["train", "--task", "copy", "--preset", "tiny", "--epochs", "1",
                 "--set", "train.max_steps=3", "--set", "task.options.max_examples=64",
                 "--set", "task.options.max_length=6", "--out-dir", str(tmp_path),
                 "--name", "s2s", *FAST]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "s2s"), "--prompt", "1 2 3 4",
                 "--max-new-tokens", "7"]) == 0
    printed = capsys.readouterr().out.strip()
    run = load_run(tmp_path / "s2s")
    task = run.task
    assert task.encode is not None and task.decode is not None and task.eos_id is not None
    assert task.bos_id is not None and isinstance(run.model, Seq2SeqTransformer)
    out = run.model.greedy_decode(torch.tensor([task.encode("1 2 3 4")]), bos_id=task.bos_id,
                                  eos_id=task.eos_id, max_length=7)
    assert int(out[0, 0]) == task.bos_id
    expected = task.decode([t for t in out[0, 1:].tolist() if t != task.eos_id])
    assert printed == expected
    assert all(word.isdigit() for word in printed.split())  # symbols only: bos / eos stripped


@pytest.mark.parametrize("prompt_length", [1, 6])
def test_rolling_cache_generation_equals_full_passes_under_the_streaming_mask(
        prompt_length: int) -> None:
    """Greedy generation with a rolling cache (window 4, 2 sinks), prompt prefilled at once,
    equals greedy decoding that re-runs the whole sequence each step under the mask
    "causal, and within the last 4 tokens or among the first 2" (StreamingLLM)."""
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("tiny"), num_layers=2, positional="rope")
    model = build_decoder_lm(config, vocab_size=25).eval()
    prompt = torch.randint(0, 25, (2, prompt_length), generator=torch.Generator().manual_seed(5))
    window, sink, new = 4, 2, 10
    got = model.generate(prompt, max_new_tokens=new, cache="rolling", window=window, sink=sink)
    streaming = masks.causal() & (masks.sliding_window(window - 1) | masks.sink(sink))
    want = prompt
    with torch.no_grad():
        for _ in range(new):
            logits = model(want, mask=streaming)[:, -1]
            want = torch.cat([want, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, want)
    # and the window matters: full attention decodes differently for this prompt
    full = model.generate(prompt, max_new_tokens=new, cache="static")
    assert not torch.equal(full, got)
