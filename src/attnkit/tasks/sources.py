"""Finding data that installed packages ship, and saying how to install it when it is missing.

Nothing here downloads: a task reads files that a pip or apt package put on disk, and when the
package is absent it raises :class:`~attnkit.tasks.base.MissingDataError` whose message is the exact
command that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

from attnkit.tasks.base import MissingDataError

__all__ = [
    "PIP_DATA_INSTALL",
    "apt_install_command",
    "atomic_write_bytes",
    "cache_dir",
    "import_package",
    "package_file",
    "require_dir",
]

# The extra that pulls every pip-installed data package (pyproject.toml optional-dependencies).
PIP_DATA_INSTALL = "pip install 'attnkit[data]'"


def import_package(name: str, *, needed_for: str, install: str = PIP_DATA_INSTALL) -> Any:
    """``import name`` (a dotted name works), or a MissingDataError saying what needs it and the
    command that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise MissingDataError(f"{needed_for} needs the Python package {name.split('.')[0]}, "
                               f"which is not installed; install it with: {install}") from err


def apt_install_command(*packages: str) -> str:
    """The Debian command that installs ``packages`` (shown in MissingDataError messages)."""
    return "apt-get install -y " + " ".join(packages)


def package_file(package: str, relative: str, *, task: str) -> Path:
    """Path of a data file inside an installed package, without importing the package.

    ``importlib.util.find_spec`` locates a top-level package without running its ``__init__``, so
    a package whose import is heavy (numba, pydantic...) costs nothing to read data from.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(
            f"task {task!r} reads its data from the Python package {package!r}, which is not "
            f"installed; install it with: {PIP_DATA_INSTALL}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.exists():
            return path
    raise MissingDataError(
        f"task {task!r}: the installed package {package!r} has no {relative!r}; reinstall it "
        f"with: {PIP_DATA_INSTALL}")


def require_dir(path: str | os.PathLike[str], *, task: str, apt_packages: tuple[str, ...]) -> Path:
    """``path`` as a Path if it is a directory, else MissingDataError naming the apt command."""
    directory = Path(path)
    if not directory.is_dir():
        raise MissingDataError(
            f"task {task!r} reads its data from {str(directory)!r}, which does not exist; "
            f"install it with: {apt_install_command(*apt_packages)} "
            f"(or pass data_dir= pointing at a copy of those files)")
    return directory


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where parsed data is cached: ``override``, else $ATTNKIT_CACHE, else ~/.cache/attnkit."""
    if override is not None:
        return Path(override)
    env = os.environ.get("ATTNKIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "attnkit"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the file is
    renamed over ``path`` (an atomic operation on POSIX), so an interrupted write leaves no torn
    cache behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a cache is readable by all
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
