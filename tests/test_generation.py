"""DecoderLM.generate: batches of prompts of different lengths, stop tokens, sampling wiring,
context checks and streaming past the context with a rolling cache.

Models run in float64 with spread-out random weights, so greedy choices are far from ties and
token-for-token comparisons are meaningful. Shape legend: B batch, L prompt length, N new tokens.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnkit.models import DecoderLM, SamplingConfig, build_decoder_lm, get_preset
from attnkit.models.decoder import new_caches

VOCAB = 23

#: positional encodings generation must handle: (ModelConfig.positional, attention options)
POSITIONALS = {"learned": ("learned", {}), "sinusoidal": ("sinusoidal", {}),
               "rope": ("rope", {}), "alibi": ("none", {"alibi": True}), "none": ("none", {})}


def lm(positional: str = "learned", *, max_length: int = 64, num_kv_heads: int | None = None,
       seed: int = 0, attention: str = "mha") -> DecoderLM:
    """A 2-layer float64 LM whose random weights give varied (non-repeating) continuations."""
    kind, options = POSITIONALS[positional]
    if num_kv_heads is not None:
        options = {**options, "num_kv_heads": num_kv_heads}
    config = dataclasses.replace(get_preset("tiny"), num_layers=2, num_heads=4,
                                 positional=kind, attention_options=options,
                                 max_length=max_length, attention=attention)
    torch.manual_seed(seed)
    model = build_decoder_lm(config, vocab_size=VOCAB).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    return model


def alone(model: DecoderLM, prompt: list[int], new: int, **options: object) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=new, **options)  # type: ignore
    return out[0].tolist()


@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4), new=st.integers(0, 6),
       positional=st.sampled_from(list(POSITIONALS)), seed=st.integers(0, 2**16),
       left=st.booleans())
def test_batched_prompts_give_each_prompt_its_own_tokens(lengths: list[int], new: int,
                                                         positional: str, seed: int,
                                                         left: bool) -> None:
    """A padded batch (right padding + lengths, or left padding + attention_mask) gives every
    prompt exactly the greedy tokens it gets alone."""
    model = lm(positional, num_kv_heads=2 if seed % 2 else None, seed=seed % 3)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]
    width = max(lengths)
    padded = torch.full((len(prompts), width), 7)  # a real id: pads must be ignored, not absent
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for b, p in enumerate(prompts):
        columns = slice(width - len(p), width) if left else slice(0, len(p))
        padded[b, columns], mask[b, columns] = torch.tensor(p), 1
    given_as = {"attention_mask": mask} if left else {"lengths": lengths}
    out = model.generate(padded, max_new_tokens=new, **given_as)  # type: ignore[arg-type]
    assert out.shape == (len(prompts), width + new)
    for b, p in enumerate(prompts):
        expected = alone(model, p, new)
        assert out[b, :len(p) + new].tolist() == expected, f"row {b} of {lengths}"
        assert (out[b, len(p) + new:] == 0).all(), "shorter rows are right-padded with pad_id"


@pytest.mark.parametrize("kind", ["gated", "differential", "adaptive_span", "topk", "ssmax",
                                  "local"])
@pytest.mark.parametrize("cache", ["static", "none"])
def test_every_cached_kind_batches_exactly(kind: str, cache: str) -> None:
    """Kinds built on MultiHeadAttention take the padded batch through the cache's pad mask;
    cache='none' decodes row by row. Either way each prompt gets its own tokens."""
    model = lm("learned", attention=kind, seed=1)
    prompts = torch.randint(0, VOCAB, (3, 6), generator=torch.Generator().manual_seed(5))
    lengths = [6, 2, 4]
    out = model.generate(prompts, lengths=lengths, max_new_tokens=5, cache=cache)
    for b, n in enumerate(lengths):
        assert out[b, :n + 5].tolist() == alone(model, prompts[b, :n].tolist(), 5)


def test_batched_prompts_take_the_batched_path() -> None:
    """The batch is decoded as one (left-padded, one cache), not row by row: its forward
    passes see the whole batch."""
    model = lm("rope")
    batches: list[int] = []
    hook = model.embedding.register_forward_hook(lambda m, a, o: batches.append(o.shape[0]))
    model.generate(torch.randint(0, VOCAB, (3, 6)), lengths=[6, 2, 4], max_new_tokens=3)
    hook.remove()
    assert batches == [3, 3, 3]


def test_eos_stops_each_row_and_pads_it() -> None:
    model = lm("rope")
    prompts = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(4))
    free = model.generate(prompts, max_new_tokens=8)[:, 5:]  # (B, N) without a stop token
    eos = int(free[0, 2])  # row 0 says it at step 2 (or earlier)
    pad = VOCAB + 5  # an id no model produces, so padding is unmistakable
    stopped = model.generate(prompts, max_new_tokens=8, eos_id=eos, pad_id=pad)[:, 5:]
    for b in range(3):
        row = free[b].tolist()
        end = row.index(eos) + 1 if eos in row else len(row)
        expected = row[:end] + [pad] * (stopped.shape[1] - end)
        assert stopped[b].tolist() == expected, f"row {b}"
    assert (stopped[0, 3:] == pad).all()
    # If eos_id were ignored, row 0 would go on with the free tokens, which are no pads.
    assert not torch.equal(stopped[0, 3:], free[0, 3:stopped.shape[1]])


def test_a_set_of_stop_tokens_and_the_early_end() -> None:
    model = lm("learned")
    prompts = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(2))
    free = model.generate(prompts, max_new_tokens=10)[:, 4:]
    stops = {int(free[0, 1]), int(free[1, 3])}
    out = model.generate(prompts, max_new_tokens=10, eos_id=stops)[:, 4:]
    firsts = [next(i for i, t in enumerate(free[b].tolist()) if t in stops) for b in range(2)]
    # generation ends once every row has stopped: no column after the last stop
    assert out.shape[1] == max(firsts) + 1
    for b in range(2):
        assert out[b, :firsts[b] + 1].tolist() == free[b, :firsts[b] + 1].tolist()
        assert (out[b, firsts[b] + 1:] == 0).all()  # pad_id defaults to 0 for a set


def test_eos_and_padding_together() -> None:
    """Stop tokens in a batch of different lengths: each row equals its own generation."""
    model = lm("alibi")
    prompts = [[1, 2, 3, 4, 5, 6], [8, 9], [3, 14, 15, 9]]
    free = [alone(model, p, 6)[len(p):] for p in prompts]
    eos = free[1][1]
    padded = torch.zeros(3, 6, dtype=torch.long)
    for b, p in enumerate(prompts):
        padded[b, :len(p)] = torch.tensor(p)
    out = model.generate(padded, lengths=[6, 2, 4], max_new_tokens=6, eos_id=eos)
    for b, p in enumerate(prompts):
        assert out[b, :len(p)].tolist() == p
        own = alone(model, p, 6, eos_id=eos)[len(p):]  # ends early when the row stops
        assert out[b, len(p):len(p) + 6].tolist() == own + [eos] * (6 - len(own))


def test_sampling_wires_temperature_top_k_and_top_p() -> None:
    model = lm("rope")
    prompt = torch.randint(0, VOCAB, (2, 3), generator=torch.Generator().manual_seed(0))
    greedy = model.generate(prompt, max_new_tokens=12)

    def sampled(seed: int, **options: float | int) -> torch.Tensor:
        return model.generate(prompt, max_new_tokens=12, sampling=SamplingConfig(**options),
                              generator=torch.Generator().manual_seed(seed))

    hot = sampled(1, temperature=50.0)  # nearly uniform over 23 tokens
    assert not torch.equal(hot, greedy), "temperature > 0 must sample"
    assert torch.equal(hot, sampled(1, temperature=50.0)), "a seeded generator repeats"
    # A tiny nucleus keeps only the most likely token: greedy, whatever the temperature. If
    # top_p were ignored this would be the near-uniform sampling above.
    assert torch.equal(sampled(1, temperature=50.0, top_p=1e-6), greedy)
    assert torch.equal(sampled(2, temperature=50.0, top_k=1), greedy)
    # top_k=2 at a high temperature: every token is one of the two most likely at its step
    out = sampled(3, temperature=50.0, top_k=2)
    logits = model(out)[:, 2:-1]  # (B, N, V): the logits each new token was drawn from
    top2 = logits.topk(2, dim=-1).indices
    assert (top2 == out[:, 3:, None]).any(-1).all()
    assert not torch.equal(out, greedy)


def test_max_length_is_checked_with_the_numbers_and_the_fix() -> None:
    model = lm("learned", max_length=16)
    prompt = torch.randint(0, VOCAB, (1, 10))
    with pytest.raises(ValueError, match=r"10 tokens and max_new_tokens is 7: 17 positions, "
                                         r"beyond the model's max_length 16; lower "
                                         r"max_new_tokens to 6$"):
        model.generate(prompt, max_new_tokens=7)
    assert model.generate(prompt, max_new_tokens=6).shape == (1, 16)
    with pytest.raises(ValueError, match=r"16 learned positions and none beyond.*"
                                         r"positional='rope'"):
        model.generate(prompt, max_new_tokens=7, cache="rolling", window=4)
    rope = lm("rope", max_length=16)
    with pytest.raises(ValueError, match="max_new_tokens to 6, or use cache='rolling'"):
        rope.generate(prompt, max_new_tokens=7)
    with pytest.raises(ValueError, match="every prompt needs 1 to 10 tokens"):
        rope.generate(prompt, lengths=[0], max_new_tokens=1)
    with pytest.raises(ValueError, match=r"attention_mask rows \[0\] have gaps"):
        rope.generate(prompt, attention_mask=torch.tensor([[1, 0] * 5]), max_new_tokens=1)
    with pytest.raises(ValueError, match=r"give lengths \(right-padded prompts\) or"):
        rope.generate(prompt, lengths=[3], attention_mask=torch.ones(1, 10), max_new_tokens=1)


@pytest.mark.parametrize("positional", ["rope", "alibi", "none"])
def test_rolling_cache_streams_past_the_context_like_its_masked_full_pass(
        positional: str) -> None:
    """Generation with cache='rolling' runs 3x past max_length; every token it chose is the
    argmax of one full forward pass over the whole output under the equivalent mask (causal,
    window and sinks), and the streamed logits equal that pass's logits."""
    model = lm(positional, max_length=12)
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
    window, sink = 6, 2
    out = model.generate(prompt, max_new_tokens=31, cache="rolling", window=window, sink=sink)
    assert out.shape == (2, 36)
    caches = new_caches(model.stack, cache="rolling", max_length=0, window=window, sink=sink)
    mask = caches[0].equivalent_mask()  # type: ignore[attr-defined]
    with torch.no_grad():
        full = model(out, mask=mask)  # (B, 36, V)
        assert torch.equal(full[:, 4:-1].argmax(-1), out[:, 5:])
        steps = [model(out[:, :5], caches=caches)]
        steps += [model(out[:, t:t + 1], caches=caches) for t in range(5, 36)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-10)
    for cache in caches:  # constant memory: never more than sinks + window keys held
        assert cache.keys is not None and cache.keys.shape[2] <= window + sink  # type: ignore
    # The window really matters: full causal attention gives other logits at the end.
    with torch.no_grad():
        assert not torch.allclose(model(out)[:, -1], full[:, -1])


def test_rolling_default_window_and_batches() -> None:
    model = lm("rope", max_length=10)
    prompts = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(3))
    out = model.generate(prompts, max_new_tokens=20, cache="rolling")  # window 10 - 4 sinks
    explicit = model.generate(prompts, max_new_tokens=20, cache="rolling", window=6, sink=4)
    assert torch.equal(out, explicit)
    uneven = model.generate(prompts, lengths=[4, 2], max_new_tokens=20, cache="rolling")
    assert uneven[1, :22].tolist() == model.generate(
        prompts[1:, :2], max_new_tokens=20, cache="rolling")[0].tolist()
