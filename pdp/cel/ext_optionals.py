"""The optional-types library: optional.of / ofNonZeroValue / none, hasValue, value, or,
orValue (optMap / optFlatMap are macros), and what generated code calls for the optional
syntax an environment with this library parses: ``a.?f``, ``a[?k]``, ``[?x]``,
``{?k: x}`` -- so that a guard for an absent section is one token, not a ``has`` chain."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from .errors import CelEvalError
from .functions import Registry
from .stdlib import make_map, map_get, no_overload, type_name
from .values import OPTIONAL_NONE, Duration, Optional, Timestamp, UInt


def opt_of(v: Any) -> Optional:
    return Optional(True, v)


def opt_none() -> Optional:
    return OPTIONAL_NONE


def _is_zero(v: Any) -> bool:
    if v is None or v is False:
        return True
    t = type(v)
    if t in (int, float, str, bytes, list, dict, tuple) or isinstance(v, int | dict | list):
        return not v
    if t is Timestamp:
        return bool(v.ns == 0)
    if t is Duration:
        return bool(v.ns == 0)
    if isinstance(v, _dt.timedelta):
        return not v
    return False


def opt_of_non_zero(v: Any) -> Optional:
    return OPTIONAL_NONE if _is_zero(v) else Optional(True, v)


def _opt(fn: str, o: Any) -> Optional:
    if type(o) is not Optional:
        raise no_overload(fn, o)
    return o


def has_value(o: Any) -> bool:
    return _opt("hasValue", o).has


def value(o: Any) -> Any:
    opt = _opt("value", o)
    if not opt.has:
        raise CelEvalError("optional.none() dereference")
    return opt.value


def or_(o: Any, other: Any) -> Any:
    opt = _opt("or", o)
    if opt.has:
        return opt
    return _opt("or", other)


def or_value(o: Any, default: Any) -> Any:
    opt = _opt("orValue", o)
    return opt.value if opt.has else default


def opt_select(c: Any, field: str) -> Optional:
    """``c.?field``: the field's value wrapped, or none when ``c`` has no such key."""
    if isinstance(c, dict):
        if field in c:
            return Optional(True, c[field])
        return OPTIONAL_NONE
    if type(c) is Optional:
        return opt_select(c.value, field) if c.has else c
    raise CelEvalError(f"type '{type_name(c)}' does not support field selection")


def opt_index(c: Any, k: Any) -> Optional:
    """``c[?k]``: the element wrapped, or none when the index / key is not there; a key
    of a type the container cannot have is an error, as for ``c[k]``."""
    tc = type(c)
    if tc is list or tc is tuple:
        tk = type(k)
        if tk is float and k == k and k % 1 == 0:
            k = int(k)
        elif tk is not int and tk is not UInt:
            raise no_overload("_[?_]", c, k)
        return Optional(True, c[k]) if 0 <= k < len(c) else OPTIONAL_NONE
    if isinstance(c, dict):
        if type(k) not in (str, int, UInt, bool, float):
            raise no_overload("_[?_]", c, k)
        found, v = map_get(c, k)
        return Optional(True, v) if found else OPTIONAL_NONE
    if tc is Optional:
        return opt_index(c.value, k) if c.has else c
    raise no_overload("_[?_]", c, k)


def opt_list(items: tuple[tuple[bool, Any], ...]) -> list[Any]:
    """A list literal with ``?`` elements: those are kept only when present (unwrapped)."""
    out = []
    for optional, v in items:
        if not optional:
            out.append(v)
        elif type(v) is not Optional:
            raise no_overload("optional element", v)
        elif v.has:
            out.append(v.value)
    return out


def opt_map(entries: tuple[tuple[Any, Any, bool], ...]) -> dict[Any, Any]:
    """A map literal with ``?`` entries: those are kept only when present (unwrapped)."""
    pairs = []
    for k, v, optional in entries:
        if not optional:
            pairs.append((k, v))
        elif type(v) is not Optional:
            raise no_overload("optional entry", v)
        elif v.has:
            pairs.append((k, v.value))
    return make_map(tuple(pairs))


def register_optionals(r: Registry) -> None:
    r.add("optional.of", "A->optional(A)", opt_of)
    r.add("optional.ofNonZeroValue", "A->optional(A)", opt_of_non_zero)
    r.add("optional.none", "()->optional(A)", opt_none)
    r.add("hasValue", "optional(A).()->bool", has_value)
    r.add("value", "optional(A).()->A", value)
    r.add("or", "optional(A).(optional(A))->optional(A)", or_)
    r.add("orValue", "optional(A).(A)->A", or_value)
