"""Runtime implementations of CEL's standard operators and functions.

Each function takes plain runtime values, dispatches on their exact types (``type(x) is``,
so ``bool`` never passes for ``int``) and raises :class:`CelEvalError` when CEL has no
matching overload.  Generated code calls these when the static types are not known.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

from pdp import zones
from pdp.turns import clock

from .errors import CelEvalError, DeadlineExceeded
from .values import (
    INT64_MAX,
    INT64_MIN,
    TS_MAX_NS,
    TS_MIN_NS,
    TYPE_VALUES,
    UINT64_MAX,
    Duration,
    Optional,
    Timestamp,
    TypeValue,
    UInt,
    format_duration,
    format_timestamp,
)

_NUM = (int, float, UInt)


def err(msg: str) -> CelEvalError:
    return CelEvalError(msg)


def type_name(v: Any) -> str:
    """CEL type name of a runtime value, for error messages and ``type()``."""
    t = type(v)
    if t is bool:
        return "bool"
    if t is int:
        return "int"
    if t is UInt:
        return "uint"
    if t is float:
        return "double"
    if t is str:
        return "string"
    if t is bytes:
        return "bytes"
    if v is None:
        return "null_type"
    if isinstance(v, list | tuple):
        return "list"
    if isinstance(v, dict):
        return "map"
    if isinstance(v, Timestamp | _dt.datetime):
        return "google.protobuf.Timestamp"
    if isinstance(v, Duration | _dt.timedelta):
        return "google.protobuf.Duration"
    if t is TypeValue:
        return "type"
    if t is Optional:
        return "optional_type"
    if isinstance(v, _dt.date):
        return "string"  # YAML dates are exposed as strings, see normalize_date
    return "unknown"


def no_overload(fn: str, *args: Any) -> CelEvalError:
    types = ", ".join(type_name(a) for a in args)
    return CelEvalError(f"no such overload: {fn}({types})")


def raise_no_overload(fn: str, *args: Any) -> NoReturn:
    raise no_overload(fn, *args)


def check_int(v: int) -> int:
    if INT64_MIN <= v <= INT64_MAX:
        return v
    raise CelEvalError("integer overflow")


def check_uint(v: int) -> UInt:
    if 0 <= v <= UINT64_MAX:
        return UInt(v)
    raise CelEvalError("unsigned integer overflow")


def as_ts(v: Any) -> Timestamp | None:
    if type(v) is Timestamp:
        return v
    if isinstance(v, _dt.datetime):
        return Timestamp.from_datetime(v)
    return None


def as_dur(v: Any) -> Duration | None:
    if type(v) is Duration:
        return v
    if isinstance(v, _dt.timedelta):
        return Duration.from_timedelta(v)
    return None


def check_ts(ns: int) -> Timestamp:
    if TS_MIN_NS <= ns <= TS_MAX_NS:
        return Timestamp(ns)
    raise CelEvalError("timestamp out of range")


def check_dur(ns: int) -> Duration:
    if INT64_MIN <= ns <= INT64_MAX:
        return Duration(ns)
    raise CelEvalError("duration out of range")


# -- equality ------------------------------------------------------------------------------

def cel_eq(a: Any, b: Any) -> bool:
    """Heterogeneous equality: numbers compare by value across int/uint/double, lists and
    maps element-wise, values of different types are simply unequal."""
    ta = type(a)
    tb = type(b)
    if ta is tb:
        if ta is list:
            return len(a) == len(b) and all(cel_eq(x, y) for x, y in zip(a, b, strict=True))
        if ta is dict:
            return _map_eq(a, b)
        if ta is float or ta in (str, int, bool, bytes, UInt, type(None)):
            return bool(a == b)
    if ta is bool or tb is bool:
        return ta is tb and a == b
    if ta in _NUM and tb in _NUM:
        return bool(a == b)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(cel_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return _map_eq(a, b)
    x, y = as_ts(a), as_ts(b)
    if x is not None and y is not None:
        return x.ns == y.ns
    d1, d2 = as_dur(a), as_dur(b)
    if d1 is not None and d2 is not None:
        return d1.ns == d2.ns
    if ta is tb is Optional:
        return bool(a.has == b.has and (not a.has or cel_eq(a.value, b.value)))
    if ta is tb is TypeValue:
        return bool(a == b)
    return False


def _map_eq(a: dict[Any, Any], b: dict[Any, Any]) -> bool:
    if len(a) != len(b):
        return False
    for k, v in a.items():
        found, w = map_get(b, k)
        if not found or not cel_eq(v, w):
            return False
    return True


def cel_ne(a: Any, b: Any) -> bool:
    return not cel_eq(a, b)


# Equality of lists and maps walks them element by element, and values built from shared
# parts (``cel.bind(l1, [l0, l0, ...], ...)``, ten levels deep) are exponentially larger
# walked than written: a few hundred characters ran for seconds, past any deadline, charged
# as one node. Where a list or a map can meet ``==`` / ``in``, the generated code calls the
# bounded forms below: every element visited counts, and the clock is read every
# EQ_CLOCK_EVERY visits.

EQ_CLOCK_EVERY = 1024
_CONTAINERS = (list, tuple, dict)


class _Walk:
    __slots__ = ("dl", "n")

    def __init__(self, dl: float) -> None:
        self.dl = dl
        self.n = 0

    def step(self, k: int = 1) -> None:
        before = self.n
        self.n += k
        if (before ^ self.n) >= EQ_CLOCK_EVERY and clock() > self.dl:
            raise DeadlineExceeded("evaluation deadline exceeded (comparing values)")


def _eq_walk(w: _Walk, a: Any, b: Any) -> bool:
    w.step()
    ta, tb = type(a), type(b)
    if ta in _CONTAINERS or tb in _CONTAINERS:
        if isinstance(a, list | tuple) and isinstance(b, list | tuple):
            if len(a) != len(b):
                return False
            return all(_eq_walk(w, x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, dict) and isinstance(b, dict):
            if len(a) != len(b):
                return False
            for k, v in a.items():
                if type(k) is not str:
                    w.step(len(b))  # a numeric / bool key is looked up by a scan
                found, x = map_get(b, k)
                if not found or not _eq_walk(w, v, x):
                    return False
            return True
        return False
    if ta is tb is Optional:
        return bool(a.has == b.has and (not a.has or _eq_walk(w, a.value, b.value)))
    return cel_eq(a, b)


def eq_bounded(dl: float, a: Any, b: Any) -> bool:
    """``a == b`` (cel_eq) that stops at the deadline ``dl`` however large the walk."""
    if type(a) not in _CONTAINERS and type(b) not in _CONTAINERS and type(a) is not Optional:
        return cel_eq(a, b)
    return _eq_walk(_Walk(dl), a, b)


def ne_bounded(dl: float, a: Any, b: Any) -> bool:
    return not eq_bounded(dl, a, b)


def in_bounded(dl: float, x: Any, c: Any) -> bool:
    """``x in c`` (contains_in) that stops at the deadline ``dl``: a list or map compared
    with each element of a list is walked under one count, a scalar is looked for in
    slices of SCAN_CHUNK elements with the clock read between them (a scan of 100 000
    numbers takes ~25 ms in Python: two of them ran a decision past its deadline)."""
    tc = type(c)
    if tc is not list and tc is not tuple:
        return contains_in(x, c)
    if type(x) in _CONTAINERS or type(x) is Optional:
        w = _Walk(dl)
        return any(_eq_walk(w, x, e) for e in c)
    n = len(c)
    if n <= SCAN_CHUNK:
        return contains_in(x, c)
    for i in range(0, n, SCAN_CHUNK):
        if i and clock() > dl:
            raise DeadlineExceeded("evaluation deadline exceeded (scanning a list)")
        if contains_in(x, c[i:i + SCAN_CHUNK]):
            return True
    return False


SCAN_CHUNK = 4096


class _NumProbe:
    """Looks up a number among a map's keys in one hash probe: Python's dict compares the
    stored key with the probe (``int.__eq__`` declines, so ours decides), and a number is
    never the bool Python holds equal to it (``True == 1``). A scan of the keys instead made
    ``-1 in m`` over 100 000 int keys a walk no budget charged (240 of them: 0.7 s)."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __hash__(self) -> int:
        return hash(self.v)

    def __eq__(self, other: object) -> bool:
        return type(other) is not bool and type(other) in _NUM and other == self.v


class _BoolProbe(_NumProbe):
    """A bool among a map's keys: only a bool key matches (never 1 or 0)."""

    __slots__ = ()
    __hash__ = _NumProbe.__hash__  # (defining __eq__ would otherwise unset it)

    def __eq__(self, other: object) -> bool:
        return type(other) is bool and other == self.v


def map_get(m: dict[Any, Any], k: Any) -> tuple[bool, Any]:
    """Look up ``k`` with CEL key semantics (numeric keys match across int/uint/double,
    bool keys never match numbers), in one hash probe."""
    tk = type(k)
    if tk is str:
        if k in m:
            return True, m[k]
        return False, None
    if tk is bool:
        probe: _NumProbe = _BoolProbe(k)
    elif tk in _NUM:
        if tk is float and not (k == k and k % 1 == 0):
            return False, None
        probe = _NumProbe(k)
    else:
        try:
            if k in m:
                return True, m[k]
        except TypeError:
            pass
        return False, None
    try:
        return True, m[probe]
    except KeyError:
        return False, None


# -- ordering ------------------------------------------------------------------------------

def _cmp(fn: str, a: Any, b: Any) -> int:
    ta, tb = type(a), type(b)
    if ta is tb and ta in (int, float, str, bytes, bool, UInt):
        return (a > b) - (a < b)  # type: ignore[no-any-return]
    if ta is tb and (ta is Duration or ta is Timestamp):
        return (a.ns > b.ns) - (a.ns < b.ns)  # type: ignore[no-any-return]
    if ta in _NUM and tb in _NUM:
        if a != a or b != b:  # NaN: every comparison is false
            return 2
        if ta is float or tb is float:  # int vs double compares as doubles (reference;
            a, b = float(a), float(b)  # the conformance cases *_big_lossy_double)
        return (a > b) - (a < b)  # type: ignore[no-any-return]
    x, y = as_ts(a), as_ts(b)
    if x is not None and y is not None:
        return (x.ns > y.ns) - (x.ns < y.ns)
    d1, d2 = as_dur(a), as_dur(b)
    if d1 is not None and d2 is not None:
        return (d1.ns > d2.ns) - (d1.ns < d2.ns)
    raise no_overload(fn, a, b)


def lt(a: Any, b: Any) -> bool:
    return _cmp("_<_", a, b) == -1


def le(a: Any, b: Any) -> bool:
    return _cmp("_<=_", a, b) in (-1, 0)


def gt(a: Any, b: Any) -> bool:
    return _cmp("_>_", a, b) == 1


def ge(a: Any, b: Any) -> bool:
    return _cmp("_>=_", a, b) in (0, 1)


# -- arithmetic ----------------------------------------------------------------------------

def add(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is int:
            r = a + b
            if INT64_MIN <= r <= INT64_MAX:
                return r
            raise CelEvalError("integer overflow")
        if ta is float or ta is str or ta is bytes:
            return a + b
        if ta is list:
            return a + b
        if ta is UInt:
            return check_uint(a + b)
        if ta is Duration:
            return check_dur(a.ns + b.ns)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) + list(b)
    x, y = as_ts(a), as_dur(b)
    if x is not None and y is not None:
        return check_ts(x.ns + y.ns)
    x, y = as_ts(b), as_dur(a)
    if x is not None and y is not None:
        return check_ts(x.ns + y.ns)
    d1, d2 = as_dur(a), as_dur(b)
    if d1 is not None and d2 is not None:
        return check_dur(d1.ns + d2.ns)
    raise no_overload("_+_", a, b)


def sub(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is int:
            return check_int(a - b)
        if ta is float:
            return a - b
        if ta is UInt:
            return check_uint(a - b)
    x = as_ts(a)
    if x is not None:
        y = as_ts(b)
        if y is not None:
            return check_dur(x.ns - y.ns)
        d = as_dur(b)
        if d is not None:
            return check_ts(x.ns - d.ns)
    d1, d2 = as_dur(a), as_dur(b)
    if d1 is not None and d2 is not None:
        return check_dur(d1.ns - d2.ns)
    raise no_overload("_-_", a, b)


def mul(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is int:
            return check_int(a * b)
        if ta is float:
            return a * b
        if ta is UInt:
            return check_uint(a * b)
    raise no_overload("_*_", a, b)


def div(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is int:
            if b == 0:
                raise CelEvalError("division by zero")
            q = abs(a) // abs(b)
            return check_int(q if (a < 0) == (b < 0) else -q)
        if ta is float:
            if b == 0.0:
                if a != a or a == 0.0:
                    return math.nan
                return math.copysign(math.inf, a) * math.copysign(1.0, b)
            return a / b
        if ta is UInt:
            if b == 0:
                raise CelEvalError("division by zero")
            return UInt(a // b)
    raise no_overload("_/_", a, b)


def mod(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is int:
            if b == 0:
                raise CelEvalError("modulus by zero")
            if b == -1 and a == INT64_MIN:
                raise CelEvalError("integer overflow")  # as cel-go: the quotient overflows
            r = abs(a) % abs(b)
            return -r if a < 0 else r
        if ta is UInt:
            if b == 0:
                raise CelEvalError("modulus by zero")
            return UInt(a % b)
    raise no_overload("_%_", a, b)


def neg(a: Any) -> Any:
    ta = type(a)
    if ta is int:
        return check_int(-a)
    if ta is float:
        return -a
    d = as_dur(a)
    if d is not None:
        return check_dur(-d.ns)
    raise no_overload("-_", a)


def logical_not(a: Any) -> bool:
    if a is True:
        return False
    if a is False:
        return True
    raise no_overload("!_", a)


# -- containers ----------------------------------------------------------------------------

def index(c: Any, k: Any) -> Any:
    tc = type(c)
    if tc is list or tc is tuple:
        tk = type(k)
        if tk is int or tk is UInt:
            i = k
        elif tk is float and k == k and k % 1 == 0:
            i = int(k)
        else:
            raise no_overload("_[_]", c, k)
        if 0 <= i < len(c):
            return c[i]
        raise CelEvalError(f"index out of bounds: {k}")
    if isinstance(c, dict):
        tk = type(k)
        if tk not in (str, int, UInt, bool, float):
            raise no_overload("_[_]", c, k)
        found, v = map_get(c, k)
        if found:
            return v
        raise CelEvalError(f"no such key: {short_repr(k)}" if tk is str else f"no such key: {k}")
    if tc is Optional:
        return opt_index(c, k)
    raise no_overload("_[_]", c, k)


def opt_index(o: Optional, k: Any) -> Optional:
    if not o.has:
        return o
    try:
        return Optional(True, index(o.value, k))
    except CelEvalError:
        return Optional(False)


def select(c: Any, field: str) -> Any:
    """``c.field`` for a non-dict ``c`` (the dict case is inlined by codegen)."""
    if isinstance(c, dict):
        if field in c:
            return c[field]
        raise CelEvalError(f"no such key: {short_repr(field)}")
    if type(c) is Optional:
        if not c.has:
            return c
        v = c.value
        if isinstance(v, dict) and field in v:
            return Optional(True, v[field])
        if isinstance(v, dict):
            return Optional(False)
        raise CelEvalError(f"type '{type_name(v)}' does not support field selection")
    raise CelEvalError(f"type '{type_name(c)}' does not support field selection")


def has_field(c: Any, field: str) -> bool:
    if isinstance(c, dict):
        return field in c
    if type(c) is Optional:
        if not c.has:
            return False
        return has_field(c.value, field)
    raise CelEvalError(f"type '{type_name(c)}' does not support field selection")


def has_set_field(c: Any, field: str) -> bool:
    """``has(m.f)`` on a section that mirrors a proto3 message: true when ``f`` holds other
    than its default (None for an unset Timestamp; ``-0.0`` is set, as on the wire)."""
    if not isinstance(c, dict):
        return has_field(c, field)
    v = c.get(field)
    if type(v) is float:
        return v != 0 or math.copysign(1.0, v) < 0
    return v is not None and v != "" and v is not False and v != 0 and v != [] and v != {}


def contains_in(x: Any, c: Any) -> bool:
    """``x in c``: list membership uses CEL equality, map membership tests keys."""
    tc = type(c)
    if tc is list or tc is tuple:
        tx = type(x)
        if tx is str or tx is bytes:
            try:  # the first element == x (C speed); exact only if it has x's type
                if type(c[c.index(x)]) is tx:
                    return True
            except ValueError:
                return False
            return any(type(e) is tx and e == x for e in c)
        if (tx is int or tx is float or tx is UInt) and x == x and x not in c:
            return False  # C speed: a number CEL-equal to x is also Python-equal to it
        return any(cel_eq(x, e) for e in c)
    if isinstance(c, dict):
        if type(x) not in (str, int, UInt, bool, float):
            return False
        return map_get(c, x)[0]
    raise no_overload("@in", x, c)


def size(v: Any) -> int:
    t = type(v)
    if t is str or t is bytes or t is list or t is tuple or isinstance(v, dict):
        return len(v)
    raise no_overload("size", v)


def make_map(pairs: tuple[tuple[Any, Any], ...]) -> dict[Any, Any]:
    """Build a map literal, rejecting unsupported key types and repeated keys."""
    out: dict[Any, Any] = {}
    for k, v in pairs:
        if type(k) not in (str, int, UInt, bool):
            raise CelEvalError(f"unsupported key type: {type_name(k)}")
        if map_get(out, k)[0]:
            raise CelEvalError(f"Failed with repeated key: {_key_text(k)}")
        if k in out:  # Python's True == 1: a dict cannot hold both as distinct keys
            raise CelEvalError(f"map keys {_key_text(k)} and {_key_text(_same_key(out, k))}"
                               " cannot be in one map here (a bool key beside the number"
                               " equal to it)")
        out[k] = v
    return out


def _key_text(k: Any) -> str:
    if type(k) is bool:
        return "true" if k else "false"
    if type(k) is UInt:
        return f"{int(k)}u"
    return repr(k)


def _same_key(m: dict[Any, Any], k: Any) -> Any:
    return next(kk for kk in m if kk == k)


# -- conversions ---------------------------------------------------------------------------

def to_int(v: Any) -> int:
    t = type(v)
    if t is int:
        return v  # type: ignore[no-any-return]
    if t is UInt:
        return check_int(int(v))
    if t is float:
        if v != v or v in (math.inf, -math.inf):
            raise CelEvalError("int conversion: range error")
        if not (-9.223372036854775808e18 < v < 9.223372036854775808e18):  # cel-go's bounds
            raise CelEvalError("int conversion: range error")
        return check_int(int(v))
    if t is str:
        try:
            return check_int(int(v, 10)) if _INT_RE.fullmatch(v) else _bad_int(v)
        except ValueError:
            _bad_int(v)
    ts = as_ts(v)
    if ts is not None:
        return ts.ns // 10**9
    raise no_overload("int", v)


_INT_RE = re.compile(r"[+-]?[0-9]+")
_UINT_RE = re.compile(r"[0-9]+")
_DOUBLE_RE = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                        r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])")
_INF_RE = re.compile(r"[+-]?[iI][nN][fF](?:[iI][nN][iI][tT][yY])?")


def short_repr(v: str, limit: int = 64) -> str:
    """A value for an error message: quoted, cut to ``limit`` characters."""
    return repr(v) if len(v) <= limit else repr(v[:limit]) + f"... ({len(v)} characters)"


def _bad_int(v: str) -> NoReturn:
    raise CelEvalError(f"cannot convert {short_repr(v)} to int")


def to_uint(v: Any) -> UInt:
    t = type(v)
    if t is UInt:
        return v  # type: ignore[no-any-return]
    if t is int:
        return check_uint(v)
    if t is float:
        if v != v or v < 0 or v >= 1.8446744073709552e19:  # cel-go: negatives refused
            raise CelEvalError("uint conversion: range error")
        return check_uint(int(v))
    if t is str:
        if len(v) > 40 or not _UINT_RE.fullmatch(v):  # Go's ParseUint: digits only
            raise CelEvalError(f"cannot convert {short_repr(v)} to uint")
        return check_uint(int(v))
    raise no_overload("uint", v)


def to_double(v: Any) -> float:
    t = type(v)
    if t is float:
        return v  # type: ignore[no-any-return]
    if t is int or t is UInt:
        return float(v)
    if t is str:
        # Go's ParseFloat syntax (ASCII digits, no blanks or "_"): Python's float() also
        # takes " 1.5", "1_000" and full-width digits. Out of range is an error, not inf.
        if len(v) > 400 or not _DOUBLE_RE.fullmatch(v):
            raise CelEvalError(f"cannot convert {short_repr(v)} to double")
        f = float(v)
        if f in (math.inf, -math.inf) and not _INF_RE.fullmatch(v):
            raise CelEvalError(f"cannot convert {short_repr(v)} to double: out of range")
        return f
    raise no_overload("double", v)


def format_double(f: float) -> str:
    """Shortest round-trip representation, in Go's %g style used by the reference."""
    if f != f:
        return "NaN"
    if f in (math.inf, -math.inf):
        return "+Inf" if f > 0 else "-Inf"
    if f == int(f) and abs(f) < 1e21:
        return str(int(f)) if f != 0 or math.copysign(1, f) > 0 else "-0"
    r = repr(f)
    if "e" in r:
        mant, exp = r.split("e")
        sign = exp[0] if exp[0] in "+-" else "+"
        digits = exp.lstrip("+-").rjust(2, "0")
        return f"{mant}e{sign}{digits}"
    return r


def to_string(v: Any) -> str:
    t = type(v)
    if t is str:
        return v  # type: ignore[no-any-return]
    if t is bool:
        return "true" if v else "false"
    if t is int or t is UInt:
        return str(int(v))
    if t is float:
        return format_double(v)
    if t is bytes:
        try:
            return v.decode("utf-8")  # type: ignore[no-any-return]
        except UnicodeDecodeError:
            raise CelEvalError("invalid UTF-8 in bytes") from None
    ts = as_ts(v)
    if ts is not None:
        return format_timestamp(ts)
    d = as_dur(v)
    if d is not None:
        return format_duration(d)
    raise no_overload("string", v)


def to_bytes(v: Any) -> bytes:
    t = type(v)
    if t is bytes:
        return v  # type: ignore[no-any-return]
    if t is str:
        return v.encode("utf-8")  # type: ignore[no-any-return]
    raise no_overload("bytes", v)


_BOOL_STR = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
             "0": False, "f": False, "F": False, "FALSE": False, "false": False,
             "False": False}


def to_bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    if type(v) is str:
        if v in _BOOL_STR:
            return _BOOL_STR[v]
        raise CelEvalError(f"cannot convert {short_repr(v)} to bool")
    raise no_overload("bool", v)


def to_dyn(v: Any) -> Any:
    return v


def type_of(v: Any) -> TypeValue:
    n = type_name(v)
    if n == "unknown":
        raise CelEvalError("value of unsupported type")
    return TYPE_VALUES[n]


# Exact Python type -> CEL type name, for the types whose CEL name follows from the exact
# type alone (what ``type_name`` answers for them).  Code generation inlines
# ``type(x) == map`` as ``type(x) is dict``, falling back to ``is_type_named`` for types not
# listed here (subclasses, ``date``, unsupported values that make ``type()`` fail).
EXACT_TYPE_NAMES: dict[type, str] = {
    bool: "bool", int: "int", UInt: "uint", float: "double", str: "string", bytes: "bytes",
    type(None): "null_type", list: "list", tuple: "list", dict: "map",
    Timestamp: "google.protobuf.Timestamp", _dt.datetime: "google.protobuf.Timestamp",
    Duration: "google.protobuf.Duration", _dt.timedelta: "google.protobuf.Duration",
    TypeValue: "type", Optional: "optional_type",
}
KNOWN_EXACT_TYPES = frozenset(EXACT_TYPE_NAMES)


def is_type_named(v: Any, name: str) -> bool:
    """``type(v) == <name>`` (raises like ``type()`` for values of unsupported types)."""
    return type_of(v).name == name


# ASCII digits only: ``\d`` would take other scripts' digits, which ``int()`` reads.
_TS_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:[Zz]|([+-][0-9]{2}:[0-9]{2}))")

# A fixed UTC offset: ``±HH:MM`` (the sign may be left out, as cel-go allows: ``02:00``).
_OFFSET_RE = re.compile(r"([+-]?)([0-9]{2}):([0-9]{2})")


def parse_offset(text: str) -> _dt.timedelta:
    """A UTC offset ``±HH:MM`` with minutes 00-59 and less than 24 hours either way (what
    Go's RFC 3339 parser, and so cel-go, accepts); anything else is an error naming it."""
    m = _OFFSET_RE.fullmatch(text)
    if not m or int(m.group(2)) > 23 or int(m.group(3)) > 59:
        raise CelEvalError(f"invalid UTC offset {text!r} (expected +HH:MM or -HH:MM, hours"
                           " 00-23, minutes 00-59)")
    off = _dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return -off if m.group(1) == "-" else off


def parse_timestamp(s: str) -> Timestamp:
    m = _TS_RE.fullmatch(s) if len(s) <= MAX_PARSED_TEXT else None
    if not m:
        raise CelEvalError(f"cannot parse timestamp {short_repr(s)}")
    y, mo, d, h, mi, sec = (int(m.group(i)) for i in range(1, 7))
    frac = m.group(7) or ""
    try:
        base = _dt.datetime(y, mo, d, h, mi, sec, tzinfo=_dt.UTC)
    except ValueError:
        raise CelEvalError(f"cannot parse timestamp {short_repr(s)}") from None
    ns = Timestamp.from_datetime(base).ns + int(frac.ljust(9, "0") or "0")
    if m.group(8):
        try:
            off = parse_offset(m.group(8))
        except CelEvalError as e:
            raise CelEvalError(f"cannot parse timestamp {s!r}: {e}") from None
        ns -= (off.days * 86400 + off.seconds) * 10**9
    return check_ts(ns)


def to_timestamp(v: Any) -> Timestamp:
    if type(v) is str:
        return parse_timestamp(v)
    if type(v) is int:
        return check_ts(v * 10**9)
    ts = as_ts(v)
    if ts is not None:
        return ts
    raise no_overload("timestamp", v)


_DUR_RE = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_DUR_UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9,
              "m": 60 * 10**9, "h": 3600 * 10**9}


#: The longest text ``duration()`` / ``timestamp()`` / a time zone argument reads: far
#: beyond any real one, and it bounds the time of one call (a 64 KB "1s1s..." took 180 ms).
MAX_PARSED_TEXT = 256


def parse_duration(s: str) -> Duration:
    """Go ``time.ParseDuration`` syntax: ``-1h30m``, ``1.5s``, ``100ms``."""
    if len(s) > MAX_PARSED_TEXT:
        raise CelEvalError(f"cannot parse duration {short_repr(s)}: longer than"
                           f" {MAX_PARSED_TEXT} characters")
    if len(s) <= 32:  # config values repeat ("60s"): parse each text once
        return _parse_duration_cached(s)
    return _parse_duration(s)


@functools.lru_cache(maxsize=1024)
def _parse_duration_cached(s: str) -> Duration:
    return _parse_duration(s)


def _parse_duration(s: str) -> Duration:
    text = s
    neg = False
    if text[:1] and text[:1] in "+-":
        neg = text[0] == "-"
        text = text[1:]
    if text == "0":
        return Duration(0)
    if not text:
        raise CelEvalError(f"cannot parse duration {short_repr(s)}")
    total = 0
    pos = 0
    while pos < len(text):
        m = _DUR_RE.match(text, pos)
        if not m or m.group(1) in ("", "."):
            raise CelEvalError(f"cannot parse duration {short_repr(s)}")
        num, unit = m.group(1), m.group(2)
        whole, _, frac = num.partition(".")
        scale = _DUR_UNITS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        pos = m.end()
    return check_dur(-total if neg else total)


def to_duration(v: Any) -> Duration:
    if type(v) is str:
        return parse_duration(v)
    d = as_dur(v)
    if d is not None:
        return d
    raise no_overload("duration", v)


# -- strings -------------------------------------------------------------------------------

def _str2(fn: str, a: Any, b: Any) -> None:
    if type(a) is not str or type(b) is not str:
        raise no_overload(fn, a, b)


def contains(a: Any, b: Any) -> bool:
    _str2("contains", a, b)
    return b in a


def starts_with(a: Any, b: Any) -> bool:
    _str2("startsWith", a, b)
    return bool(a.startswith(b))


def ends_with(a: Any, b: Any) -> bool:
    _str2("endsWith", a, b)
    return bool(a.endswith(b))


# -- timestamps ----------------------------------------------------------------------------

def _zone(tz: Any) -> _dt.tzinfo:
    if type(tz) is not str:
        raise no_overload("timezone", tz)
    if len(tz) > MAX_PARSED_TEXT:
        raise CelEvalError(f"unknown time zone {short_repr(tz)}: longer than {MAX_PARSED_TEXT}"
                           " characters")
    if ":" in tz or tz[:1] in ("+", "-") or tz[:1].isdigit():
        return _offset_zone(tz)  # no zone name looks so: an offset, or an error naming it
    try:
        return zones.zone(tz)  # the bundled tzdata, never the host's files
    except zones.UnknownZone as e:
        why = "it depends on the host" if zones.host_dependent(tz) else \
            "expected an IANA name such as Europe/Berlin or UTC, or an offset such as +02:00"
        raise CelEvalError(f"unknown time zone {short_repr(tz)} ({why})") from e


@functools.lru_cache(maxsize=256)
def _offset_zone(tz: str) -> _dt.tzinfo:
    return _dt.timezone(parse_offset(tz))


def _local(ts: Any, tz: Any, fn: str) -> tuple[_dt.datetime, int]:
    t = as_ts(ts)
    if t is None:
        raise no_overload(fn, ts)
    zone = _dt.UTC if tz is None else _zone(tz)
    try:
        return t.to_datetime(zone), t.ns % 10**9
    except OverflowError:  # local time before year 1 or after 9999
        raise CelEvalError(f"{fn}: timestamp out of range in time zone {tz!r}") from None


def _ts_getter(fn: str, get: Callable[[_dt.datetime, int], int]) -> Callable[..., int]:
    def f(ts: Any, tz: Any = None) -> int:
        if type(ts) is Duration or isinstance(ts, _dt.timedelta):
            return _dur_getter(fn, ts)
        d, ns = _local(ts, tz, fn)
        return get(d, ns)
    f.__name__ = fn
    return f


def _dur_getter(fn: str, v: Any) -> int:
    d = as_dur(v)
    assert d is not None
    def toward_zero(n: int, unit: int) -> int:  # exact: float division loses digits
        return n // unit if n >= 0 else -((-n) // unit)
    secs = toward_zero(d.ns, 10**9)
    table = {"getHours": toward_zero(secs, 3600),
             "getMinutes": toward_zero(secs, 60), "getSeconds": secs,
             "getMilliseconds": (d.ns // 10**6) % 1000 if d.ns >= 0
             else -((-d.ns // 10**6) % 1000)}
    if fn not in table:
        raise no_overload(fn, v)
    return table[fn]


TS_GETTERS: dict[str, Callable[..., int]] = {
    "getFullYear": _ts_getter("getFullYear", lambda d, ns: d.year),
    "getMonth": _ts_getter("getMonth", lambda d, ns: d.month - 1),
    "getDayOfYear": _ts_getter("getDayOfYear", lambda d, ns: d.timetuple().tm_yday - 1),
    "getDayOfMonth": _ts_getter("getDayOfMonth", lambda d, ns: d.day - 1),
    "getDate": _ts_getter("getDate", lambda d, ns: d.day),
    "getDayOfWeek": _ts_getter("getDayOfWeek", lambda d, ns: (d.weekday() + 1) % 7),
    "getHours": _ts_getter("getHours", lambda d, ns: d.hour),
    "getMinutes": _ts_getter("getMinutes", lambda d, ns: d.minute),
    "getSeconds": _ts_getter("getSeconds", lambda d, ns: d.second),
    "getMilliseconds": _ts_getter("getMilliseconds", lambda d, ns: ns // 10**6),
}
