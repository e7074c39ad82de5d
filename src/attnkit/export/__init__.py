"""Models out of attnkit: ONNX export of trained runs (``attnkit export RUN_DIR --onnx F``)."""

from attnkit.export.onnx import ExportReport, export_onnx, export_run

__all__ = ["ExportReport", "export_onnx", "export_run"]
