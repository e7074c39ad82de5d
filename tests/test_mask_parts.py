"""Reading masks as causal + key padding (``split_mask``) and counting each query's keys
(``allowed_key_counts``), against the oracle's definitions of the masks."""

from __future__ import annotations

import pytest
import torch

import oracle
from attnkit.engine import allowed_key_counts, split_mask
from oracle import MaskDef

VALID = torch.tensor([[True, True, False, True, True, False, True],
                      [True, False, True, True, True, True, False]])


@pytest.mark.parametrize("lq, lk", [(4, 7), (7, 7), (9, 7)])
@pytest.mark.parametrize("mask", [
    oracle.causal(), oracle.padding([5, 2]), oracle.padding(VALID),
    oracle.causal() & oracle.padding(VALID), oracle.full(),
    oracle.window(2, 1),
], ids=["causal", "lengths", "valid", "causal-valid", "full", "window"])
def test_allowed_key_counts_equal_the_definition(mask: MaskDef, lq: int, lk: int) -> None:
    """Analytic counts (causal, padding and both) and chunked counts (anything else, 3 query
    rows per chunk here) equal the number of allowed keys per query, as float (B|1, 1, Lq, 1)."""
    want = mask.allowed(2, 1, lq, lk).sum(-1, keepdim=True).double()
    got = allowed_key_counts(mask.build(), batch=2, heads=1, lq=lq, lk=lk,
                             device=torch.device("cpu"), chunk=3)
    assert got.dtype == torch.get_default_dtype() and got.dim() == 4 and got.shape[2:] == (lq, 1)
    torch.testing.assert_close(got.double().expand(2, 1, lq, 1), want)
    assert torch.equal(allowed_key_counts(None, batch=2, heads=1, lq=lq, lk=lk,
                                          device=torch.device("cpu")),
                       torch.full((1, 1, lq, 1), float(lk)))


def test_allowed_key_counts_of_packed_causal_documents() -> None:
    ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 2, 2, 2]])
    mask = oracle.causal() & oracle.document(ids)
    got = allowed_key_counts(mask.build(), batch=2, heads=1, lq=7, lk=7,
                             device=torch.device("cpu"), chunk=3)
    torch.testing.assert_close(got.double(), mask.allowed(2, 1, 7, 7).sum(-1, keepdim=True)
                               .double())


def test_split_mask_reads_causal_and_padding_or_says_what_it_supports() -> None:
    parts = split_mask(None, batch=2, lq=3, lk=5, device=torch.device("cpu"), kind="linear")
    assert parts.causal is False and parts.key_valid is None
    parts = split_mask((oracle.causal() & oracle.padding([4, 2])).build(), batch=2, lq=3, lk=5,
                       device=torch.device("cpu"), kind="linear")
    assert parts.causal is True
    assert torch.equal(parts.key_valid, torch.arange(5) < torch.tensor([[4], [2]]))
    with pytest.raises(ValueError) as err:
        split_mask(oracle.window(1).build(), batch=1, lq=3, lk=3, device=torch.device("cpu"),
                   kind="linear")
    assert str(err.value) == (
        "attention kind 'linear' supports only causal() and padding(...) masks joined with &, "
        "got sliding_window(1); it never forms the score matrix, so other masks cannot be "
        "applied (use kind 'mha' or 'local')")
    with pytest.raises(ValueError, match=r"supports only padding\(\.\.\.\) masks"):
        split_mask(oracle.window(1).build(), batch=1, lq=3, lk=3, device=torch.device("cpu"),
                   kind="nystrom", allow_causal=False)
    with pytest.raises(ValueError, match="for batch size 2"):
        split_mask(oracle.padding([1, 2]).build(), batch=3, lq=3, lk=3,
                   device=torch.device("cpu"), kind="linear")


@pytest.mark.parametrize("mask", [
    None, oracle.full(), oracle.causal(), oracle.padding([5, 2]), oracle.padding(VALID),
    oracle.causal() & oracle.padding(VALID), oracle.window(2, 1),
], ids=["none", "full", "causal", "lengths", "valid", "causal-valid", "window"])
def test_counts_and_key_padding_are_made_on_the_device_asked_for(mask: MaskDef | None) -> None:
    """Every path builds its tensors on ``device`` (the meta device here, so a tensor made on
    the CPU by mistake shows up on a CPU-only machine)."""
    meta = torch.device("meta")
    built = None if mask is None else mask.build()
    counts = allowed_key_counts(built, batch=2, heads=1, lq=6, lk=7, device=meta, chunk=4)
    assert counts.device == meta and counts.shape[2:] == (6, 1)
    if mask is not None and "window" not in repr(built):
        parts = split_mask(built, batch=2, lq=6, lk=7, device=meta, kind="ssmax")
        assert parts.key_valid is None or parts.key_valid.device == meta


def test_split_mask_checks_the_mask_against_the_call_shape() -> None:
    """A mask made for other lengths, batch or heads is refused before it is read."""
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="7"):
        split_mask(oracle.padding(VALID).build(), batch=2, lq=6, lk=6, device=cpu, kind="linear")
    with pytest.raises(ValueError, match="batch"):
        split_mask(oracle.padding(VALID).build(), batch=3, lq=6, lk=7, device=cpu, kind="linear")
    # a per-head mask is checked with its own head count, then refused for what it is
    heads = oracle.dense_mask(torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(0))
                              > 0.3).build()
    with pytest.raises(ValueError, match="supports only causal"):
        split_mask(heads, batch=2, lq=6, lk=7, device=cpu, kind="linear")
