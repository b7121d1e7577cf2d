"""The optional-types library: optional.of / ofNonZeroValue / none, hasValue, value, or,
orValue (optMap / optFlatMap are macros).  The ``.?`` / ``[?`` syntax is not enabled, see
the conformance runner's notes."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from .errors import CelEvalError
from .functions import Registry
from .stdlib import no_overload
from .values import OPTIONAL_NONE, Duration, Optional, Timestamp


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


def register_optionals(r: Registry) -> None:
    r.add("optional.of", "A->optional(A)", opt_of)
    r.add("optional.ofNonZeroValue", "A->optional(A)", opt_of_non_zero)
    r.add("optional.none", "()->optional(A)", opt_none)
    r.add("hasValue", "optional(A).()->bool", has_value)
    r.add("value", "optional(A).()->A", value)
    r.add("or", "optional(A).(optional(A))->optional(A)", or_)
    r.add("orValue", "optional(A).(A)->A", or_value)
