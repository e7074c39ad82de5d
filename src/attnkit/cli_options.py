"""Options that several ``attnkit`` subcommands share, defined once so each command module adds
them with one call (and later additions, like ``--hf``, merge in one place)."""

from __future__ import annotations

import argparse

__all__ = ["add_device_option"]


def add_device_option(parser: argparse.ArgumentParser, *, default: str | None = "auto",
                      default_text: str | None = None) -> None:
    """``--device auto|cpu|cuda|cuda:N|mps`` (auto: CUDA when present, else CPU)."""
    parser.add_argument("--device", default=default, metavar="DEVICE",
                        help=f"where the model runs: auto (CUDA when present), cpu, cuda, "
                             f"cuda:N, mps (default {default_text or default})")
