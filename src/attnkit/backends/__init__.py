"""Attention backends: each declares what it supports; the dispatcher picks one."""

from attnkit.backends.base import Backend, Capabilities
from attnkit.backends.dispatch import (
    DispatchReport,
    NoBackendError,
    get_backend,
    list_backends,
    register_backend,
    select_backend,
)

__all__ = ["Backend", "Capabilities", "DispatchReport", "NoBackendError", "get_backend",
           "list_backends", "register_backend", "select_backend"]
