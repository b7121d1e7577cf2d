"""Registers the optional libraries by name."""

from __future__ import annotations

from .functions import Registry


def register_extensions(r: Registry, names: tuple[str, ...]) -> None:
    """Add the named extension libraries to ``r`` (bindings / macros are always parsed)."""
    from .ext_encoders import register_encoders
    from .ext_math import register_math
    from .ext_optionals import register_optionals
    from .ext_strings import register_strings

    table = {"strings": register_strings, "math": register_math,
             "encoders": register_encoders, "optionals": register_optionals}
    if "domain" in names:
        from .domain import register_domain
        table["domain"] = register_domain
    for n in names:
        if n in table:
            table[n](r)
