"""Exception types shared by every layer (this module imports nothing of attnkit).

:class:`UsageError` marks a mistake the user can fix (a bad option, a refused run directory, a
damaged file): the CLI prints it as one line and exits with status 2, and ``--debug`` (or
``ATTNKIT_DEBUG=1``) shows the traceback. It subclasses :class:`ValueError`, so code that
already catches ``ValueError`` for bad input keeps working.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A user error: the message names the bad value and the fix."""
