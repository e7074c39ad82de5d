"""Every input check of ``validate()``: a clear error that names the bad values, raised before
any backend runs, from both ``attention`` and ``dispatch_report``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from attnkit import attention, dispatch_report, masks
from attnkit import bias as biases


def qkv(b: int = 2, hq: int = 4, hkv: int = 2, lq: int = 4, lk: int = 5, d: int = 6,
        dv: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    return torch.randn(b, hq, lq, d), torch.randn(b, hkv, lk, d), torch.randn(b, hkv, lk, dv)


def _replace(index: int, value: Any) -> Callable[[], tuple[Any, ...]]:
    def build() -> tuple[Any, ...]:
        tensors: list[Any] = list(qkv())
        tensors[index] = value() if callable(value) else value
        return tuple(tensors)
    return build


TENSOR_ERRORS = [
    ("q not a tensor", _replace(0, [[1.0]]), TypeError, ["q must be a torch.Tensor", "list"]),
    ("k 3-D", _replace(1, lambda: torch.randn(2, 5, 6)), ValueError,
     ["k must be 4-D", "(2, 5, 6)", "transpose(1, 2)"]),
    ("v integer", _replace(2, lambda: torch.ones(2, 2, 5, 3, dtype=torch.long)), ValueError,
     ["v must be floating point", "torch.int64"]),
    ("dtype mismatch", _replace(1, lambda: torch.randn(2, 2, 5, 6, dtype=torch.float64)),
     ValueError, ["share a dtype", "torch.float32, torch.float64, torch.float32", ".to(q.dtype)"]),
    ("device mismatch", _replace(2, lambda: torch.empty(2, 2, 5, 3, device="meta")), ValueError,
     ["one device", "cpu, cpu, meta"]),
    ("batch mismatch", _replace(1, lambda: torch.randn(3, 2, 5, 6)), ValueError,
     ["batch sizes differ", "q has 2, k has 3, v has 2"]),
    ("k/v heads differ", _replace(2, lambda: torch.randn(2, 1, 5, 3)), ValueError,
     ["k has 2 heads but v has 1"]),
    ("Hq not a multiple of Hkv", lambda: qkv(hq=5, hkv=2), ValueError,
     ["q has 5 heads, k has 2", "multiple of the key heads (GQA)"]),
    ("head dims differ", _replace(1, lambda: torch.randn(2, 2, 5, 7)), ValueError,
     ["q head dim is 6 but k head dim is 7"]),
    ("k/v lengths differ", _replace(2, lambda: torch.randn(2, 2, 6, 3)), ValueError,
     ["k has 5 positions but v has 6"]),
    ("no key heads", _replace(1, lambda: torch.randn(2, 0, 5, 6)), ValueError,
     ["k has 0 heads but v has 2"]),
]


@pytest.mark.parametrize("entry", ["attention", "dispatch_report"])
@pytest.mark.parametrize("case, build, error, words", TENSOR_ERRORS,
                         ids=[c[0] for c in TENSOR_ERRORS])
def test_tensor_errors(entry: str, case: str, build: Callable[[], tuple[Any, ...]],
                       error: type[Exception], words: list[str]) -> None:
    fn = attention if entry == "attention" else dispatch_report
    with pytest.raises(error) as err:
        fn(*build())  # type: ignore[operator]
    for word in words:
        assert word in str(err.value), (case, str(err.value))


OPTION_ERRORS: list[tuple[str, dict[str, Any], type[Exception], list[str]]] = [
    ("nan scale", {"scale": float("nan")}, ValueError, ["scale must be finite, got nan"]),
    ("inf scale", {"scale": float("inf")}, ValueError, ["scale must be finite, got inf"]),
    ("zero softcap", {"softcap": 0.0}, ValueError, ["softcap must be a positive finite", "0.0"]),
    ("negative softcap", {"softcap": -2.0}, ValueError, ["got -2.0"]),
    ("inf softcap", {"softcap": float("inf")}, ValueError, ["got inf"]),
    ("nan softcap", {"softcap": float("nan")}, ValueError, ["got nan"]),
    ("dropout 1", {"dropout_p": 1.0}, ValueError, ["dropout_p must be in [0, 1), got 1.0"]),
    ("negative dropout", {"dropout_p": -0.1}, ValueError, ["got -0.1"]),
    ("nan dropout", {"dropout_p": float("nan")}, ValueError, ["got nan"]),
    ("mask not a Mask", {"mask": torch.ones(4, 5, dtype=torch.bool)}, TypeError,
     ["mask must be an attnkit.masks.Mask", "masks.dense(bool_tensor)", "Tensor"]),
    ("mask for another batch", {"mask": masks.padding([1, 2, 3])}, ValueError,
     ["batch size 3", "q has batch size 2"]),
    ("mask with other heads", {"mask": masks.dense(torch.ones(1, 3, 4, 5, dtype=torch.bool))},
     ValueError, ["has 3 heads, but q has 4"]),
    ("dense mask of other lengths", {"mask": masks.dense(torch.ones(4, 4, dtype=torch.bool))},
     ValueError, ["dense mask is (4, 4) but attention is (4, 5)"]),
    ("padding mask of other length",
     {"mask": masks.padding(torch.ones(2, 7, dtype=torch.bool))}, ValueError,
     ["covers 7 keys but there are 5 keys"]),
    ("document ids of other length",
     {"mask": masks.causal() & masks.document(torch.zeros(2, 4, dtype=torch.long))},
     ValueError, ["cover 4 queries and 4 keys", "4 queries and 5 keys", "kv_ids"]),
    ("wrong mask inside a combination",
     {"mask": masks.causal() | ~masks.dense(torch.ones(3, 5, dtype=torch.bool))},
     ValueError, ["dense mask is (3, 5) but attention is (4, 5)"]),
    ("bias not a Bias", {"bias": torch.zeros(4, 5)}, TypeError,
     ["bias must be an attnkit.bias.Bias", "bias.dense(tensor)", "got Tensor"]),
    ("alibi with other heads", {"bias": biases.alibi(3)}, ValueError,
     ["has 3 heads but q has 4 heads", "num_heads=4"]),
    ("learned buckets with other heads", {"bias": biases.relative_buckets(2)}, ValueError,
     ["has 2 heads but q has 4 heads"]),
    ("dense bias for another batch", {"bias": biases.dense(torch.zeros(3, 1, 4, 5))},
     ValueError, ["batch size 3", "q has 2"]),
    ("dense bias of other lengths", {"bias": biases.dense(torch.zeros(4, 6))}, ValueError,
     ["dense bias is (4, 6) but attention is (4, 5)"]),
    ("wrong bias inside a sum", {"bias": biases.alibi(4) + biases.dense(torch.zeros(5, 5))},
     ValueError, ["dense bias is (5, 5) but attention is (4, 5)"]),
]


@pytest.mark.parametrize("entry", ["attention", "dispatch_report"])
@pytest.mark.parametrize("case, options, error, words", OPTION_ERRORS,
                         ids=[c[0] for c in OPTION_ERRORS])
def test_option_errors(entry: str, case: str, options: dict[str, Any], error: type[Exception],
                       words: list[str]) -> None:
    fn = attention if entry == "attention" else dispatch_report
    with pytest.raises(error) as err:
        fn(*qkv(), **options)  # type: ignore[operator]
    for word in words:
        assert word in str(err.value), (case, str(err.value))


@pytest.mark.parametrize("backend", ["reference", "blocked", "sdpa_dense"])
def test_errors_come_before_any_backend(backend: str) -> None:
    """A forced backend does not change which error the user sees."""
    with pytest.raises(ValueError, match="q has 5 heads, k has 2"):
        attention(*qkv(hq=5, hkv=2), backend=backend)
    with pytest.raises(ValueError, match=r"dense mask is \(4, 4\)"):
        attention(*qkv(), mask=masks.dense(torch.ones(4, 4, dtype=torch.bool)), backend=backend)


def test_valid_edge_values_are_accepted() -> None:
    """Boundaries that are legal: dropout 0, any finite scale (even 0 or negative), tiny softcap."""
    q, k, v = qkv()
    for options in ({"dropout_p": 0.0}, {"scale": 0.0}, {"scale": -1.5}, {"softcap": 1e-3},
                    {"mask": masks.padding([5, 0])}, {"bias": biases.alibi(1)}):
        out = attention(q, k, v, **options)
        assert out.shape == (2, 4, 4, 3) and torch.isfinite(out).all()
