"""The optional ``transformers`` dependency, imported only when a Hugging Face feature is used."""

from __future__ import annotations

from types import ModuleType

__all__ = ["INSTALL_HINT", "import_transformers"]

INSTALL_HINT = "pip install 'attnkit[hf]'"


def import_transformers() -> ModuleType:
    """``import transformers``, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"this attnkit.hf feature needs Hugging Face Transformers: "
                          f"{INSTALL_HINT}") from err
    return transformers
