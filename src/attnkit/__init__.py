"""attnkit: attention mechanisms that are fast, correct and visible."""

from attnkit.engine import attention, dispatch_report
from attnkit.errors import UsageError
from attnkit.functional import bias, masks, positional

__version__ = "0.1.0"

__all__ = ["UsageError", "__version__", "attention", "bias", "dispatch_report", "masks",
           "positional"]
