"""Checkpoints: safe formats round-trip, atomic writes, a failed write keeps the last good one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnkit.models import build_decoder_lm, get_preset
from attnkit.train import checkpoint as ckpt


def test_flatten_roundtrip_keeps_types() -> None:
    state = {"optimizer": {"state": {0: {"step": torch.tensor(3.0), "m": torch.randn(2, 3)}},
                           "param_groups": [{"betas": (0.9, 0.99), "lr": 1e-3, "params": [0]}]},
             "rng": torch.get_rng_state(), "best": None, "name": "x", "flag": True}
    skeleton, tensors = ckpt.flatten_state(state)
    json.dumps(skeleton)  # the non-tensor part is plain JSON
    back = ckpt.unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert list(back["optimizer"]["state"]) == [0]  # int keys stay ints
    assert torch.equal(back["optimizer"]["state"][0]["m"], state["optimizer"]["state"][0]["m"])
    assert back["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.99]
    assert torch.equal(back["rng"], state["rng"])
    assert back["best"] is None and back["flag"] is True and back["name"] == "x"
    with pytest.raises(ValueError, match="cannot store"):
        ckpt.flatten_state({"f": object()})


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_decoder_lm(get_preset("tiny"), vocab_size=11)


def test_save_load_with_tied_weights_and_optimizer(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randint(0, 11, (2, 5))).sum().backward()
    opt.step()
    path = ckpt.save_checkpoint(tmp_path, step=1, model=model,
                                state={"optimizer": opt.state_dict(), "epoch": 0})
    assert ckpt.latest_checkpoint(tmp_path) == path
    assert not any(p.suffix == ".pkl" or p.name.endswith(".pt") for p in path.iterdir())
    fresh = _model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    state = ckpt.load_checkpoint(path, fresh)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert fresh.head.weight is fresh.embedding.table.weight  # still tied after loading
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    opt2.load_state_dict(state["optimizer"])
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1[k][name], s2[k][name])


def test_failed_write_keeps_the_last_good_checkpoint(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    first = ckpt.save_checkpoint(tmp_path, step=1, model=model, state={"epoch": 1})

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full (simulated) while writing the state file")

    monkeypatch.setattr(ckpt, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, step=2, model=model, state={"epoch": 2})
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert ckpt.load_checkpoint(first, _model())["epoch"] == 1
    assert not (tmp_path / "step-00000002").exists()
    assert not list(tmp_path.glob(".step-*"))  # the partial directory was removed


def test_keeps_only_recent_checkpoints(tmp_path: Path) -> None:
    model = _model()
    for step in range(1, 5):
        ckpt.save_checkpoint(tmp_path, step=step, model=model, state={"s": step}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000003", "step-00000004"]


def test_weights_that_do_not_fit_give_a_clear_error(tmp_path: Path) -> None:
    ckpt.save_weights(_model(), tmp_path / "w.safetensors")
    other = build_decoder_lm(get_preset("tiny"), vocab_size=12)
    with pytest.raises(Exception, match=r"size|shape|fit"):
        ckpt.load_weights(other, tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError):
        ckpt.load_weights(other, tmp_path / "missing.safetensors")
