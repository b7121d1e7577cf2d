"""Runtime value types where CEL differs from plain Python values.

Everything else is the plain Python value: int (CEL int), float (double), str, bytes, bool,
None (null), list, dict.  ``datetime`` and ``timedelta`` from activations are accepted
wherever a timestamp / duration is expected and converted on use.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1

# Timestamps: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z, as ns since the epoch.
TS_MIN_NS = -62135596800 * 10**9
TS_MAX_NS = 253402300799 * 10**9 + 999_999_999
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


class UInt(int):
    """CEL ``uint``: a distinct type so that ``1u`` and ``1`` dispatch differently."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{int(self)}u"


class Timestamp:
    """CEL timestamp with nanosecond precision (Python datetime only has microseconds)."""

    __slots__ = ("ns",)

    def __init__(self, ns: int) -> None:
        self.ns = ns

    @staticmethod
    def from_datetime(d: _dt.datetime) -> Timestamp:
        if d.tzinfo is None:
            d = d.replace(tzinfo=_dt.UTC)
        delta = d - _EPOCH
        return Timestamp((delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000)

    def to_datetime(self, tz: _dt.tzinfo = _dt.UTC) -> _dt.datetime:
        secs, ns = divmod(self.ns, 10**9)
        return (_EPOCH + _dt.timedelta(seconds=secs, microseconds=ns // 1000)).astimezone(tz)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _dt.datetime):
            other = Timestamp.from_datetime(other)
        if isinstance(other, Timestamp):
            return self.ns == other.ns
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("ts", self.ns))

    def __repr__(self) -> str:
        return f"timestamp({format_timestamp(self)!r})"


class Duration:
    """CEL duration in nanoseconds (int64 range, as in the reference implementation)."""

    __slots__ = ("ns",)

    def __init__(self, ns: int) -> None:
        self.ns = ns

    @staticmethod
    def from_timedelta(d: _dt.timedelta) -> Duration:
        return Duration((d.days * 86400 + d.seconds) * 10**9 + d.microseconds * 1000)

    def to_timedelta(self) -> _dt.timedelta:
        return _dt.timedelta(microseconds=self.ns // 1000)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _dt.timedelta):
            other = Duration.from_timedelta(other)
        if isinstance(other, Duration):
            return self.ns == other.ns
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("dur", self.ns))

    def __repr__(self) -> str:
        return f"duration({format_duration(self)!r})"


class Optional:
    """CEL ``optional_type`` value: either empty or holding one value."""

    __slots__ = ("has", "value")

    def __init__(self, has: bool, value: Any = None) -> None:
        self.has = has
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Optional):
            return NotImplemented
        if self.has != other.has:
            return False
        if not self.has:
            return True
        # Python's equality of the wrapped values; CEL's ``==`` on optionals (1 == 1.0
        # inside them too) is stdlib.cel_eq, which compares optionals itself.
        return bool(self.value == other.value)

    def __hash__(self) -> int:
        return hash(("opt", self.has))

    def __repr__(self) -> str:
        return f"optional.of({self.value!r})" if self.has else "optional.none()"


OPTIONAL_NONE = Optional(False)


class TypeValue:
    """A CEL type used as a value (``type(x) == int``); compared by name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TypeValue):
            return self.name == other.name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("type", self.name))

    def __repr__(self) -> str:
        return self.name


TYPE_VALUES = {n: TypeValue(n) for n in (
    "int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type",
    "google.protobuf.Timestamp", "google.protobuf.Duration", "optional_type",
)}


def format_timestamp(t: Timestamp) -> str:
    """RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, like the reference."""
    secs, ns = divmod(t.ns, 10**9)
    d = _EPOCH + _dt.timedelta(seconds=secs)
    base = d.strftime("%Y-%m-%dT%H:%M:%S")
    base = f"{d.year:04d}" + base[base.index("-"):]
    if ns:
        frac = f"{ns:09d}"
        frac = frac.rstrip("0")
        width = 3 if len(frac) <= 3 else 6 if len(frac) <= 6 else 9
        base += "." + frac.ljust(width, "0")
    return base + "Z"


def format_duration(d: Duration) -> str:
    """Seconds with an optional fraction and an ``s`` suffix, e.g. ``1.5s``."""
    ns = d.ns
    sign = "-" if ns < 0 else ""
    secs, frac = divmod(abs(ns), 10**9)
    if frac:
        return f"{sign}{secs}.{f'{frac:09d}'.rstrip('0')}s"
    return f"{sign}{secs}s"
