"""Tuning constants of the kernels: one table, its defaults, and the per-machine config file.

Block sizes and thresholds trade speed on one CPU against another; their defaults were measured
on the project's 2-core build VM (the measurements and commands are in docs/tuning.md).
``attnkit bench tune`` re-measures the important ones on the user's machine and writes a small
JSON file that the engine reads at first use:

- the path is ``$ATTNKIT_TUNING`` if set, else ``tuning.json`` in the user config directory
  (``platformdirs.user_config_dir("attnkit")``, e.g. ``~/.config/attnkit/tuning.json``);
- ``{"version": 1, "values": {"band_block": 64, ...}}``: any subset of :class:`Tuning`'s fields;
  the others keep their defaults. ``"measured"`` (free-form provenance) may sit beside them;
- a file that cannot be read or has an unknown key or a bad value raises
  :class:`TuningFileError`, one line naming the file and the fix.

No file: the defaults below, exactly. :func:`override` changes values for a block of code (tests,
the tuner's own measurements).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ENV_VAR", "Tuning", "TuningFileError", "current", "default_path", "load",
           "override", "reset", "write"]

ENV_VAR = "ATTNKIT_TUNING"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Tuning:
    """Every tuning constant of the kernels, with what it trades off (all positive ints)."""

    # -- blocked backend, fused CPU path (backends/blocked_fused.py) ----------------------------
    #: Query rows per kernel call of a narrow two-sided band (sliding window). Each block
    #: computes ``band_block + width - 1`` keys per row block, so smaller blocks waste less
    #: work; the kernel's speed per score drops below ~32 rows.
    band_block: int = 32
    #: The same in the backward, whose cost per block is dk / dv over the block's whole key
    #: range: larger blocks write them fewer times.
    band_block_backward: int = 128
    #: Widest band (keys per row) planned in ``band_block`` rows; wider ones run as tiles, whose
    #: unmasked middles need no mask and where the block size stops mattering.
    band_max_width: int = 1024
    #: Largest kernel output (elements) per kernel call: bigger calls have less Python overhead,
    #: but outputs past glibc's mmap threshold are mapped and zero-faulted anew on every call.
    piece_elements: int = 1 << 21
    #: A run of tiles with partial ends is split into masked ends + an unmasked middle from this
    #: many full middle tiles (the split costs one log-sum-exp merge).
    min_full_tiles_to_split: int = 4
    #: Most mask elements built for one batched kernel call (bool + float: ~5 bytes each).
    max_mask_elements: int = 1 << 24
    #: Tile (query rows, keys) of the fused path's tile plan: only sets how finely masked work
    #: is skipped (the kernel runs on whole runs of tiles).
    fused_block_q: int = 128
    fused_block_k: int = 128
    # -- blocked backend, pure PyTorch loop (backends/blocked.py) -------------------------------
    #: Tile of the pure loop, which pays Python overhead per tile: larger tiles mean fewer
    #: steps, smaller ones skip masked work better.
    pure_block_q: int = 256
    pure_block_k: int = 512
    # -- dispatch (backends/dispatch.py) --------------------------------------------------------
    #: On CUDA, auto prefers SDPA with a dense mask over the tiled loop while the mask has at
    #: most this many elements (memory quadratic in L against a ~10x slower loop).
    gpu_dense_mask_max_elements: int = 1 << 28
    # -- kernel-feature kinds (backends/kernelized.py) ------------------------------------------
    #: Chunk length of the non-causal chunked path: larger chunks mean fewer, wider GEMMs but
    #: bigger (C, M) temporaries.
    kernel_noncausal_chunk: int = 512
    #: Chunk length of the causal parallel form: C x C products inside a chunk against
    #: per-chunk states (M x Dv each) across chunks.
    kernel_causal_chunk: int = 128
    # -- adaptive span (backends/span_band.py) --------------------------------------------------
    #: Query rows per kernel call of the span band: each block computes ``block + 2 * window``
    #: keys, and fewer blocks mean less overhead.
    span_block: int = 256

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tuning value {f.name} must be a positive integer, got "
                                 f"{value!r}")


DEFAULTS = Tuning()
_FIELDS = frozenset(f.name for f in dataclasses.fields(Tuning))


class TuningFileError(ValueError):
    """The tuning config file cannot be used; the message names the file and the fix."""


def default_path() -> Path:
    """Where the tuning file is read from and written to: ``$ATTNKIT_TUNING`` or the user
    config directory's ``tuning.json``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("attnkit")) / "tuning.json"


def load(path: Path) -> Tuning:
    """The defaults with ``path``'s values applied; a missing file gives the defaults."""
    fix = f"fix it, delete it, or rerun 'attnkit bench tune' (or unset {ENV_VAR})"
    if not path.exists():
        return DEFAULTS
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TuningFileError(f"tuning file {str(path)!r} cannot be read ({err}); {fix}") \
            from None
    if not isinstance(raw, dict) or not isinstance(raw.get("values"), dict):
        raise TuningFileError(f"tuning file {str(path)!r} needs an object with a \"values\" "
                              f"object; {fix}")
    if raw.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise TuningFileError(f"tuning file {str(path)!r} has version {raw.get('version')!r}, "
                              f"this attnkit reads {FORMAT_VERSION}; {fix}")
    values: dict[str, Any] = raw["values"]
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise TuningFileError(f"tuning file {str(path)!r} has unknown keys {unknown}; known: "
                              f"{sorted(_FIELDS)}; {fix}")
    try:
        return dataclasses.replace(DEFAULTS, **values)
    except ValueError as err:
        raise TuningFileError(f"tuning file {str(path)!r}: {err}; {fix}") from None


_current: Tuning | None = None


def current() -> Tuning:
    """The tuning in force: read from :func:`default_path` at first use, then kept."""
    global _current
    if _current is None:
        _current = load(default_path())
    return _current


def reset() -> None:
    """Forget the tuning read so far; the next :func:`current` reads the file again."""
    global _current
    _current = None


@contextlib.contextmanager
def override(**values: int) -> Iterator[Tuning]:
    """Use these values (over the current ones) inside the block; restores them after."""
    global _current
    before = current()
    _current = dataclasses.replace(before, **values)
    try:
        yield _current
    finally:
        _current = before


def write(values: dict[str, int], path: Path, *, measured: dict[str, Any] | None = None
          ) -> Path:
    """Write ``values`` (a subset of :class:`Tuning`'s fields) to ``path`` atomically, after
    checking them; ``measured`` records where they came from. Returns the path."""
    dataclasses.replace(DEFAULTS, **values)  # validates names and values
    payload = {"version": FORMAT_VERSION, "values": values, "measured": measured or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tuning-", suffix=".json",
                                     delete=False) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(handle.name, path)
    return path
