"""attn_implementation="attnkit": logits and greedy tokens equal transformers' eager and sdpa.

Every model is built from a config with random weights, saved with ``save_pretrained`` to a
temporary folder and loaded from there: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

transformers = pytest.importorskip("transformers", reason="pip install 'attnkit[hf]'")

import attnkit  # noqa: E402
import attnkit.hf  # noqa: E402
from attnkit.hf.engine_backend import attention_forward, engine_inputs  # noqa: E402
from hf_tiny_models import ARCHITECTURES, BY_NAME, TinyArchitecture  # noqa: E402

TOLERANCE = 1e-5  # max abs logit difference allowed (float32)


@pytest.fixture(scope="module", autouse=True)
def registered() -> str:
    return attnkit.hf.register()


def logits_of(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def real_rows(logits: Tensor, real: Tensor) -> Tensor:
    """Logits at real (non-padding) positions; classifier logits (B, C) pass unchanged."""
    return logits[real] if logits.dim() == 3 else logits


@pytest.fixture
def seen_masks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records repr() of every mask the attnkit attention function receives."""
    seen: list[str] = []

    def spy(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
            **kwargs: Any) -> Any:
        seen.append(repr(attention_mask))
        return attention_forward(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(transformers.AttentionInterface._global_mapping, "attnkit", spy)
    return seen


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: a.name)
def test_logits_equal_eager_and_sdpa(arch: TinyArchitecture, tmp_path: Path,
                                     seen_masks: list[str]) -> None:
    folder = arch.save(tmp_path)
    inputs, real = arch.batch()
    ours = real_rows(logits_of(arch.load(folder, "attnkit"), inputs), real)
    references = ["eager", "sdpa"] if arch.sdpa_supported else ["eager"]
    for implementation in references:
        theirs = real_rows(logits_of(arch.load(folder, implementation), inputs), real)
        assert theirs.abs().max() > 0.1  # a real signal, not zeros
        diff = (ours - theirs).abs().max().item()
        print(f"parity {arch.name} attnkit vs {implementation}: max abs logit diff {diff:.1e}")
        assert diff <= TOLERANCE, f"{arch.name}: max |attnkit - {implementation}| = {diff:.2e}"
    assert seen_masks, "the attnkit attention function never ran"
    dense = [m for m in seen_masks if "dense" in m]
    assert not dense, f"{arch.name} fell back to dense masks: {dense}"


def test_structured_masks_reach_the_engine(tmp_path: Path, seen_masks: list[str]) -> None:
    """Padding, causal and sliding-window structure survive the translation (no L x L)."""
    for name, expected in (("gpt2", "causal(offset=0) & padding(key_valid"),
                           ("bert", "padding(lengths=[12, 8, 5])"),
                           ("mistral", "sliding_window(3, offset=0) & padding(key_valid")):
        arch = BY_NAME[name]
        seen_masks.clear()
        inputs, _ = arch.batch()
        logits_of(arch.load(arch.save(tmp_path / name), "attnkit"), inputs)
        assert any(expected in m for m in seen_masks), (name, seen_masks)


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a.decoder], ids=lambda a: a.name)
def test_greedy_generation_is_identical(arch: TinyArchitecture, tmp_path: Path) -> None:
    folder = arch.save(tmp_path)
    inputs, _ = arch.batch()
    tokens = {}
    for implementation in ["eager", "sdpa", "attnkit"]:
        if implementation == "sdpa" and not arch.sdpa_supported:
            continue
        model = arch.load(folder, implementation)
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False, use_cache=True,
                             pad_token_id=0)
        tokens[implementation] = out[:, inputs["input_ids"].shape[1]:]
    for implementation, generated in tokens.items():
        assert torch.equal(generated, tokens["eager"]), (implementation, generated,
                                                         tokens["eager"])
    assert len(torch.unique(tokens["eager"])) > 3  # the tiny model does not just repeat a token


def test_set_attn_implementation_switches_a_loaded_model(tmp_path: Path) -> None:
    arch = BY_NAME["llama"]
    folder = arch.save(tmp_path)
    inputs, real = arch.batch()
    model = arch.load(folder, "eager")
    eager = logits_of(model, inputs)
    model.set_attn_implementation("attnkit")
    assert model.config._attn_implementation == "attnkit"
    ours = logits_of(model, inputs)
    assert (ours - eager)[real].abs().max() <= TOLERANCE


def test_attention_dropout_is_carried_over(tmp_path: Path) -> None:
    """Training mode drops attention weights (output changes); gradients flow and are finite."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=32,
                        attn_pdrop=0.3, resid_pdrop=0.0, embd_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    model = GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="attnkit")
    ids = torch.randint(0, 97, (2, 10))
    model.eval()
    with torch.no_grad():
        evaluated = model(input_ids=ids).logits
    model.train()
    torch.manual_seed(1)
    first = model(input_ids=ids, labels=ids)
    torch.manual_seed(2)
    with torch.no_grad():
        second = model(input_ids=ids).logits
    assert (first.logits - evaluated).abs().max() > 1e-3
    assert (first.logits - second).abs().max() > 1e-3
    first.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    # With the attention dropout off, training mode gives the eval output: it was that dropout.
    for module in model.modules():
        if hasattr(module, "attn_dropout"):
            module.attn_dropout.p = 0.0
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, evaluated, atol=1e-6)


# -- mask translation against transformers' own dense masks -----------------------------------
def _sdpa_dense(**kwargs: Any) -> Tensor:
    return transformers.masking_utils.sdpa_mask(allow_is_causal_skip=False, **kwargs)


@settings(max_examples=60, deadline=None)
@given(q_length=st.integers(1, 9), past=st.integers(0, 6), window=st.integers(1, 6),
       pattern=st.sampled_from(["causal", "bidirectional", "sliding", "sliding_bidirectional",
                                "chunked", "or"]),
       pad=st.lists(st.integers(0, 5), min_size=2, max_size=2), left=st.booleans())
def test_translated_masks_equal_transformers_dense_masks(q_length: int, past: int, window: int,
                                                         pattern: str, pad: list[int],
                                                         left: bool) -> None:
    mu = transformers.masking_utils
    functions = {
        "causal": mu.causal_mask_function,
        "bidirectional": mu.bidirectional_mask_function,
        "sliding": mu.sliding_window_causal_mask_function(window),
        "sliding_bidirectional": mu.sliding_window_bidirectional_mask_function(window),
        "chunked": mu.chunked_causal_mask_function(window, torch.zeros(2, dtype=torch.long)),
        "or": mu.or_masks(mu.causal_mask_function, mu.sliding_window_overlay(window)),
    }
    kv_length = past + q_length
    valid = torch.ones(2, kv_length, dtype=torch.bool)
    for row, count in enumerate(pad):
        count = min(count, kv_length - 1)
        if count and left:
            valid[row, :count] = False
        elif count:
            valid[row, kv_length - count:] = False
    sizes = dict(batch_size=2, q_length=q_length, kv_length=kv_length, q_offset=past,
                 kv_offset=0, mask_function=functions[pattern], attention_mask=valid)
    translated = attnkit.hf.translate_mask(**sizes)
    want = _sdpa_dense(**sizes).expand(2, 1, q_length, kv_length)
    got = translated.dense(q_length, kv_length).expand(2, 1, q_length, kv_length)
    assert torch.equal(got, want), (pattern, translated)
    assert ("dense" in repr(translated)) == (pattern == "chunked")


def test_sliding_window_cache_offsets_translate_exactly() -> None:
    """A sliding-window cache keeps only the last keys: kv_offset > 0 shifts the band."""
    mu = transformers.masking_utils
    sizes = dict(batch_size=1, q_length=3, kv_length=6, q_offset=10, kv_offset=7,
                 mask_function=mu.sliding_window_causal_mask_function(4),
                 attention_mask=torch.ones(1, 13, dtype=torch.bool))
    translated = attnkit.hf.translate_mask(**sizes)
    assert repr(translated) == "sliding_window(3, offset=3)"
    assert torch.equal(translated.dense(3, 6), _sdpa_dense(**sizes))


def test_packed_sequences_become_document_masks() -> None:
    mu = transformers.masking_utils
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2]])
    ids = mu.find_packed_sequence_indices(positions)
    function = mu.and_masks(mu.remap_positions_for_packed_sequence(mu.causal_mask_function,
                                                                   positions),
                            mu.packed_sequence_mask_function(ids))
    sizes = dict(batch_size=1, q_length=8, kv_length=8, mask_function=function)
    translated = attnkit.hf.translate_mask(**sizes)
    assert "document" in repr(translated) and "dense" not in repr(translated)
    assert torch.equal(translated.dense(8, 8), _sdpa_dense(**sizes))


# -- the attention function on its own ----------------------------------------------------------
class _Module(nn.Module):
    is_causal = False


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_four_d_masks_from_callers_match_eager(kind: str) -> None:
    from transformers.models.llama.modeling_llama import eager_attention_forward

    torch.manual_seed(0)
    module = _Module()
    module.num_key_value_groups = 2
    module.training = False
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    allowed = torch.rand(2, 1, 5, 7) > 0.3
    allowed[..., 0] = True  # every row keeps a key (eager averages fully masked rows)
    mask = allowed if kind == "bool" else torch.zeros(2, 1, 5, 7).masked_fill(~allowed, -1e9)
    ours, _ = attention_forward(module, q, k, v, mask, scaling=0.3)
    additive = torch.zeros(2, 1, 5, 7).masked_fill(~allowed, torch.finfo(torch.float32).min)
    theirs, _ = eager_attention_forward(module, q, k, v, additive, scaling=0.3)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_no_mask_follows_the_module_causality() -> None:
    q = torch.randn(1, 2, 4, 8)
    k = torch.randn(1, 2, 4, 8)
    assert repr(engine_inputs(None, q, k, is_causal=True)[0]) == "causal(offset=0)"
    assert engine_inputs(None, q[:, :, :1], k, is_causal=True)[0] is None  # one decoded query
    assert engine_inputs(None, q, k, is_causal=False) == (None, None)
    # Masks that allow every pair are dropped: fused softmax when weights are recomputed.
    assert engine_inputs(attnkit.masks.full(), q, k, is_causal=True) == (None, None)
    decoded = engine_inputs(attnkit.masks.causal(offset=3), q[:, :, :1], k, is_causal=True)
    assert decoded == (None, None)
    assert engine_inputs(attnkit.masks.causal(offset=0), q, k, is_causal=True)[0] is not None


def test_unsupported_arguments_are_refused() -> None:
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(NotImplementedError, match=r"s_aux.*eager"):
        attention_forward(_Module(), q, q, q, None, s_aux=torch.zeros(2))


def test_without_transformers_register_says_how_to_install(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    with pytest.raises(ImportError, match=r"pip install 'attnkit\[hf\]'"):
        attnkit.hf.register()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral"])
def test_logits_equal_sdpa_on_cuda(name: str, tmp_path: Path) -> None:
    arch = BY_NAME[name]
    folder = arch.save(tmp_path)
    inputs, real = arch.batch()
    inputs = {k: v.cuda() for k, v in inputs.items()}
    ours = logits_of(arch.load(folder, "attnkit").cuda(), inputs)
    theirs = logits_of(arch.load(folder, "sdpa").cuda(), inputs)
    assert (ours - theirs)[real.cuda()].abs().max() <= 1e-4  # TF32-free float32 kernels differ
