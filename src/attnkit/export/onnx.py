"""ONNX export through ``torch.onnx.export(dynamo=True)``, checked with onnxruntime.

Needs ``pip install 'attnkit[onnx]'`` (onnx, onnxscript for torch's exporter, onnxruntime for the
check). Which families export: the encoder classifier and the decoder LM (dynamic batch and
sequence axes) and the ViT (dynamic batch; the patch grid is fixed by its position table).

While exporting, every attention layer runs the ``sdpa_dense`` backend: ``torch.export`` traces
the model into a graph, which cannot follow backends that plan their work from the mask's
values (the blocked kernels skip empty tiles that way). The weights and the math are the same;
the exported graph materializes the (B, H, L, L) mask as SDPA does.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attnkit.layers.base import AttentionLayer
from attnkit.models import DecoderLM, Seq2SeqTransformer, TransformerClassifier

__all__ = ["EXPORT_BACKEND", "ONNX_INSTALL", "ExportReport", "example_inputs", "export_onnx",
           "export_run"]

ONNX_INSTALL = "pip install 'attnkit[onnx]'"
#: The engine backend attention layers use while being traced for export.
EXPORT_BACKEND = "sdpa_dense"


@dataclass
class ExportReport:
    """What was exported and how closely onnxruntime reproduces PyTorch."""

    path: Path  # the .onnx file
    inputs: list[str]  # graph input names
    dynamic_axes: dict[str, list[str]]  # input name -> axis names that may vary
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # check name -> |ORT - torch|
    seconds: float = 0.0  # time to export and check

    def summary(self) -> dict[str, Any]:
        return {"onnx": str(self.path), "inputs": self.inputs,
                "dynamic_axes": self.dynamic_axes, "max_abs_diff": self.max_abs_diff,
                "seconds": round(self.seconds, 1)}


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: {ONNX_INSTALL}")


def _attention_kinds(model: nn.Module) -> list[str]:
    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, AttentionLayer)})


@contextlib.contextmanager
def _traceable_backends(model: nn.Module) -> Iterator[None]:
    """Every attention layer (and anything else holding an engine ``backend`` name) on
    :data:`EXPORT_BACKEND` for the duration; restored afterwards."""
    saved = [(m, m.backend) for m in model.modules()
             if isinstance(getattr(m, "backend", None), str)]
    try:
        for module, _ in saved:
            setattr(module, "backend", EXPORT_BACKEND)  # noqa: B010  (nn.Module typing)
        yield
    finally:
        for module, name in saved:
            setattr(module, "backend", name)  # noqa: B010


def _run_onnxruntime(path: Path, inputs: dict[str, Tensor]) -> Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: value.detach().cpu().numpy() for name, value in inputs.items()}
    return torch.from_numpy(session.run(None, feeds)[0])


def export_onnx(model: nn.Module, inputs: dict[str, Tensor], path: str | Path, *,
                dynamic_axes: dict[str, dict[int, str]] | None = None,
                max_lengths: dict[str, int] | None = None,
                check_inputs: list[dict[str, Tensor]] | None = None, atol: float = 1e-4,
                opset: int | None = None) -> ExportReport:
    """Export ``model(**inputs)`` to ``path`` and check onnxruntime against PyTorch.

    Args:
        model: any attnkit model (put in eval mode on a CPU copy; the original is untouched).
        inputs: example inputs by forward-argument name, e.g. ``{"tokens": (B, L) ids}``.
        dynamic_axes: per input, ``{axis: name}`` of axes that may vary (same name = same size).
        max_lengths: upper bound per axis name (e.g. the position table's length).
        check_inputs: further inputs (other shapes) that onnxruntime must reproduce too.
        atol: largest allowed ``|onnxruntime - torch|`` on every check, else ValueError.

    Raises ValueError naming the model's attention kinds and the exporter's reason when the
    model cannot be traced.
    """
    _require_onnx()
    start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()
    dims: dict[str, Any] = {}
    dynamic_shapes: dict[str, dict[int, Any]] = {}
    for name, axes in (dynamic_axes or {}).items():
        spec = {}
        for axis, axis_name in axes.items():
            if axis_name not in dims:
                upper = (max_lengths or {}).get(axis_name)
                # No lower bound: torch.export traces sizes >= 2 (a 1 would specialize); the
                # ONNX graph's axes are symbolic and run on length 1 as well (tested).
                dims[axis_name] = torch.export.Dim(axis_name, max=upper) \
                    if upper is not None else torch.export.Dim(axis_name)
            spec[axis] = dims[axis_name]
        dynamic_shapes[name] = spec
    for name in inputs:
        dynamic_shapes.setdefault(name, {})
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with _traceable_backends(model), torch.no_grad():
            program = torch.onnx.export(model, (), kwargs=inputs, dynamic_shapes=dynamic_shapes,
                                        dynamo=True, opset_version=opset, verbose=False)
            if program is None:
                raise ValueError("torch.onnx.export returned no program")
            program.save(str(tmp))
    except Exception as err:
        tmp.unlink(missing_ok=True)
        reason = _first_reason(err)
        raise ValueError(f"cannot export {type(model).__name__} with attention "
                         f"{_attention_kinds(model)} to ONNX: {reason}") from err
    report = ExportReport(path=path, inputs=list(inputs),
                          dynamic_axes={k: list(v.values()) for k, v in
                                        (dynamic_axes or {}).items()})
    try:  # checked while still under the temporary name: a failed check leaves no file
        _check_dynamic_axes(tmp, dynamic_axes or {}, model)
        _check_outputs(model, tmp, [inputs, *(check_inputs or [])], atol, report)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    report.seconds = time.perf_counter() - start
    return report


def _check_outputs(model: nn.Module, path: Path, feeds: list[dict[str, Tensor]], atol: float,
                   report: ExportReport) -> None:
    """Record ``max |onnxruntime - torch|`` per feed in ``report``; ValueError above ``atol``."""
    with torch.no_grad():
        for i, feed in enumerate(feeds):
            shape = "x".join(str(s) for s in next(iter(feed.values())).shape)
            expected = model(**feed)
            try:
                got = _run_onnxruntime(path, feed)
            except Exception as err:  # onnxruntime's own error types
                raise ValueError(f"onnxruntime cannot run the exported graph on inputs of "
                                 f"shape {shape}: {_first_reason(err)}") from err
            diff = float((got.double() - expected.double()).abs().max())
            report.max_abs_diff[f"check {i} ({shape})"] = diff
            if not diff <= atol:
                raise ValueError(f"onnxruntime differs from PyTorch by {diff:.3g} > {atol} on "
                                 f"inputs of shape {shape}; the export is not faithful")


def _check_dynamic_axes(path: Path, dynamic_axes: dict[str, dict[int, str]],
                        model: nn.Module) -> None:
    """Raise ValueError if the graph fixed an axis that was declared dynamic.

    When ``torch.export`` cannot keep a size symbolic, torch's ONNX exporter may fall back to a
    graph for the example's sizes only; onnxruntime would then reject every other shape.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    fixed = []
    for graph_input in graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        for axis, name in dynamic_axes.get(graph_input.name, {}).items():
            if axis < len(dims) and not dims[axis].dim_param:
                fixed.append(f"{graph_input.name} axis {axis} ({name}) = {dims[axis].dim_value}")
    if fixed:
        raise ValueError(f"cannot export {type(model).__name__} with attention "
                         f"{_attention_kinds(model)} to ONNX with dynamic axes: tracing fixed "
                         f"{', '.join(fixed)} (the attention code turns these sizes into "
                         f"constants); export at fixed sizes instead (attnkit export --static, or "
                         f"leave those axes out of dynamic_axes)")


def _first_reason(err: BaseException) -> str:
    """The exporter's own explanation, without its multi-paragraph advice."""
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip() or type(cause).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(cause).__name__}: {' '.join(lines[:3])[:500]}"


def example_inputs(model: nn.Module, x: Tensor, lengths: Tensor | None
                    ) -> tuple[dict[str, Tensor], dict[str, dict[int, str]], dict[str, int]]:
    """Forward arguments, their dynamic axes and axis bounds for one of attnkit's families."""
    if isinstance(model, Seq2SeqTransformer):
        raise ValueError("seq2seq runs do not export: their forward needs the target prefix and "
                         "decoding loops over it; export the encoder classifier, decoder LM or "
                         "ViT")
    positions = getattr(model, "positions", None)
    table = getattr(positions, "table", None)
    max_length = int(table.shape[0]) if isinstance(table, Tensor) else None
    if isinstance(model, DecoderLM):
        bounds = {} if max_length is None else {"length": max_length}
        return {"tokens": x}, {"tokens": {0: "batch", 1: "length"}}, bounds
    if isinstance(model, TransformerClassifier):
        if x.dim() == 4:  # images: the patch grid is fixed by the position table
            return {"x": x}, {"x": {0: "batch"}}, {}
        extra = 1 if model.cls_token is not None else 0
        bounds = {} if max_length is None else {"length": max_length - extra}
        if x.is_floating_point() and lengths is not None:  # frames: padding needs the lengths
            return ({"x": x, "lengths": lengths}, {"x": {0: "batch", 1: "length"},
                                                   "lengths": {0: "batch"}}, bounds)
        return {"x": x}, {"x": {0: "batch", 1: "length"}}, bounds
    raise ValueError(f"no ONNX export for {type(model).__name__}; export works for the encoder "
                     f"classifier, decoder LM and ViT")


def _other_shape(inputs: dict[str, Tensor], axes: dict[str, dict[int, str]]) -> dict[str, Tensor]:
    """Inputs with a different batch (and length, where dynamic): proves the axes are free."""
    out = {}
    for name, value in inputs.items():
        dynamic = axes.get(name, {})
        index: list[Any] = [slice(None)] * value.dim()
        if 1 in dynamic and value.shape[1] > 1:
            index[1] = slice(0, value.shape[1] - 1)
        trimmed = value[tuple(index)]
        out[name] = torch.cat([trimmed, trimmed[:1]]) if 0 in dynamic else trimmed
    if "lengths" in out and "x" in out:
        out["lengths"] = out["lengths"].clamp(max=out["x"].shape[1])
    return out


def export_run(run_dir: str | Path, path: str | Path, *, weights: str = "best",
               batch_size: int = 2, atol: float = 1e-4, static: bool = False) -> ExportReport:
    """Export a trained run's model to ONNX with example inputs from its test split.

    ``static``: fix every axis to the example batch's sizes (for kinds whose code pins them)."""
    from attnkit.train import load_run
    from attnkit.train.data import iterate

    run = load_run(run_dir, weights=weights)
    batch = next(iter(iterate(run.task.test, batch_size=batch_size, pad_id=run.task.pad_id)))
    inputs, axes, bounds = example_inputs(run.model, batch.inputs, batch.lengths)
    if static:
        return export_onnx(run.model, inputs, path, atol=atol)
    return export_onnx(run.model, inputs, path, dynamic_axes=axes, max_lengths=bounds,
                       check_inputs=[_other_shape(inputs, axes)], atol=atol)
