"""CLI command of the export area: ``attnkit export RUN_DIR --onnx model.onnx``."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register"]


def _cmd_export(args: argparse.Namespace) -> int:
    from attnkit.export.onnx import export_run

    report = export_run(args.run_dir, args.onnx, weights=args.weights,
                        batch_size=args.batch_size, atol=args.atol, static=args.static)
    print(json.dumps(report.summary(), indent=2))
    return 0


def register(subparsers: Any) -> None:
    """Add ``export`` to the ``attnkit`` command."""
    p = subparsers.add_parser(
        "export", help="export a trained run's model to ONNX",
        description="Export a run's model (encoder classifier, decoder LM or ViT) to ONNX with "
                    "dynamic batch (and sequence, where the model allows) axes, then check that "
                    "onnxruntime reproduces PyTorch on the run's test inputs and on a second "
                    "shape. Needs: pip install 'attnkit[onnx]'.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--weights", default="best", choices=["best", "latest"])
    p.add_argument("--batch-size", type=int, default=2, dest="batch_size",
                   help="example batch taken from the test split (default 2)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest allowed |onnxruntime - torch| (default 1e-4)")
    p.add_argument("--static", action="store_true",
                   help="fix batch and length to the example's (for attention kinds whose code "
                        "pins them; the error says when)")
    p.set_defaults(handler=_cmd_export)
