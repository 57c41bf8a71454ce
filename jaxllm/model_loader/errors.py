"""The loaders' own exception type (host-side: imports nothing heavy)."""

from __future__ import annotations


class ModelNotFoundError(FileNotFoundError, ValueError):
    """A model file or folder is missing (caught as either FileNotFoundError or ValueError)."""
