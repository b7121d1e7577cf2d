"""Registers the optional libraries by name."""

from __future__ import annotations

from .functions import Registry


def register_extensions(r: Registry, names: tuple[str, ...]) -> None:
    """Add the named extension libraries to ``r``."""
    return None
