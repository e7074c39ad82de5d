"""ONNX export: onnxruntime reproduces PyTorch within 1e-4, with dynamic batch / sequence axes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnkit.cli import main
from attnkit.export import export_onnx
from attnkit.models import (
    ModelConfig,
    build_decoder_lm,
    build_encoder_classifier,
    build_seq2seq,
)

for _name in ("onnx", "onnxscript", "onnxruntime"):
    pytest.importorskip(_name, reason=f"ONNX export needs {_name}: pip install 'attnkit[onnx]'")

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

TINY = ModelConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1, dropout=0.0, max_length=32,
                   patch_size=4)


def test_decoder_lm_exports_with_dynamic_batch_and_length(tmp_path: Path) -> None:
    model = build_decoder_lm(TINY, vocab_size=20).eval()
    tokens = torch.randint(0, 20, (2, 9))
    report = export_onnx(model, {"tokens": tokens}, tmp_path / "lm.onnx",
                         dynamic_axes={"tokens": {0: "batch", 1: "length"}},
                         max_lengths={"length": 32},
                         check_inputs=[{"tokens": torch.randint(0, 20, (3, 5))},
                                       {"tokens": torch.randint(0, 20, (1, 32))}])
    assert len(report.max_abs_diff) == 3
    assert max(report.max_abs_diff.values()) <= 1e-4
    assert report.path.is_file() and not list(tmp_path.glob(".*.tmp"))


def test_encoder_padding_survives_export(tmp_path: Path) -> None:
    """Pads (id 0) are masked inside the graph: padded and unpadded rows give their own logits."""
    model = build_encoder_classifier(TINY, vocab_size=20, num_classes=3).eval()
    tokens = torch.randint(1, 20, (3, 7))
    tokens[1, 4:] = 0
    tokens[2, 1:] = 0
    report = export_onnx(model, {"x": tokens}, tmp_path / "enc.onnx",
                         dynamic_axes={"x": {0: "batch", 1: "length"}},
                         max_lengths={"length": 32},
                         check_inputs=[{"x": torch.randint(1, 20, (2, 11))},
                                       {"x": torch.randint(1, 20, (1, 1))}])
    assert max(report.max_abs_diff.values()) <= 1e-4


def test_seq2seq_is_refused_with_the_reason(tmp_path: Path) -> None:
    from attnkit.export.onnx import example_inputs

    model = build_seq2seq(TINY, source_vocab_size=10, target_vocab_size=10, pad_id=0)
    with pytest.raises(ValueError, match="seq2seq runs do not export"):
        example_inputs(model, torch.zeros(1, 3, dtype=torch.long), None)


def _tiny_run(tmp_path: Path, *args: str) -> Path:
    assert main(["train", "--preset", "tiny", "--epochs", "1", "--set", "train.max_steps=2",
                 "--set", "train.tensorboard=false", "--no-progress",
                 "--set", "train.num_threads=1", "--out-dir", str(tmp_path), "--name", "run",
                 *args]) == 0
    return tmp_path / "run"


@pytest.mark.parametrize(("task", "family"), [("digits", "vit"), ("recall", "encoder")])
def test_cli_export_of_a_trained_run(task: str, family: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    options = ["--set", "task.options.num_train=64", "--set", "task.options.num_val=16",
               "--set", "task.options.num_test=16"] if task == "recall" else []
    run = _tiny_run(tmp_path, "--task", task, "--model", family, *options)
    capsys.readouterr()
    assert main(["export", str(run), "--onnx", str(tmp_path / "m.onnx")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"] == ["x"] and "batch" in report["dynamic_axes"]["x"]
    assert len(report["max_abs_diff"]) == 2  # the test batch and a second shape
    assert max(report["max_abs_diff"].values()) <= 1e-4


def test_cli_export_needs_a_run_directory(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path), "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "not a run directory" in capsys.readouterr().err



class _DataDependent(torch.nn.Module):
    """Branches on a value: torch.export cannot turn that into one graph."""

    def __init__(self) -> None:
        super().__init__()
        from attnkit.layers.multihead import MultiHeadAttention

        self.attention = MultiHeadAttention(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention(x)
        return y * 2 if bool(y.sum() > 0) else y


def test_untraceable_model_gets_an_error_naming_its_kinds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot export _DataDependent with attention "
                                         r"\['MultiHeadAttention'\] to ONNX: \w+"):
        export_onnx(_DataDependent(), {"x": torch.randn(2, 5, 8)}, tmp_path / "a.onnx",
                    dynamic_axes={"x": {0: "batch", 1: "length"}})
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_kind_that_pins_the_length_is_named_and_exports_static(tmp_path: Path) -> None:
    """'linear' fixes the length while tracing: refused as dynamic, exported at fixed size."""
    from dataclasses import replace

    model = build_encoder_classifier(replace(TINY, attention="linear"), vocab_size=20,
                                     num_classes=3)
    tokens = torch.randint(1, 20, (2, 9))
    with pytest.raises(ValueError, match=r"\['LinearAttention'\] to ONNX with dynamic axes: "
                                         r"tracing fixed x axis 1 \(length\) = 9"):
        export_onnx(model, {"x": tokens}, tmp_path / "d.onnx",
                    dynamic_axes={"x": {0: "batch", 1: "length"}}, max_lengths={"length": 32})
    assert not list(tmp_path.iterdir())
    report = export_onnx(model, {"x": tokens}, tmp_path / "s.onnx")
    assert max(report.max_abs_diff.values()) <= 1e-4
