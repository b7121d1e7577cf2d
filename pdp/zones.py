"""IANA time zones from the bundled ``tzdata`` package only, never from the host.

``zoneinfo.ZoneInfo(name)`` reads the host's ``/usr/share/zoneinfo`` first and falls back to
the ``tzdata`` package only when the host has no file; two sidecars on images with different
tzdata releases would then disagree about local time (a rule's hours, a daily cap's day).
Every zone pdp uses is loaded here, from the package, so every host answers the same.

Refused: names the package does not list, names that mean the host's own setting or no zone
at all (``localtime``, ``posixrules``, ``Factory``, ...), and anything that is not a plain
zone name (absolute paths, ``..``, backslashes, NUL).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

#: Names that load on some hosts (or from the package) but mean that host's own setting, or
#: no zone at all: compared case-folded.
HOST_ZONES = frozenset({"localtime", "local", "posixrules", "factory", ""})

#: The package holding the zone files (a dependency of pdp: the same data on every host).
_PACKAGE = "tzdata"


class UnknownZone(ValueError):
    """A zone name the bundled tzdata does not have (or one that depends on the host)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(problem)
        self.name = name
        self.problem = problem


@functools.cache
def zone_names() -> frozenset[str]:
    """The zone names the bundled tzdata lists, minus host-dependent names."""
    try:
        text = importlib.resources.files(_PACKAGE).joinpath("zones").read_text(
            encoding="utf-8")
    except (ModuleNotFoundError, OSError):
        return frozenset()  # no package: no zone at all, rather than the host's
    return frozenset(n for n in text.split() if n.lower() not in HOST_ZONES
                     and not n.startswith(("posix/", "right/")))


def tzdata_version() -> str:
    """The IANA release of the bundled data (``2026f``), or ``unknown``."""
    try:
        text = importlib.resources.files(_PACKAGE).joinpath("__init__.py").read_text(
            encoding="utf-8")
    except (ModuleNotFoundError, OSError):
        return "unknown"
    for line in text.splitlines():
        if line.startswith("IANA_VERSION"):
            return line.partition("=")[2].strip().strip("\"'")
    return "unknown"


@functools.cache
def _folded() -> dict[str, str]:
    return {n.lower(): n for n in sorted(zone_names(), reverse=True)}


def host_dependent(name: str) -> bool:
    """Whether ``name`` means the host's own zone (or no zone) rather than a fixed one."""
    return name.strip().lower() in HOST_ZONES


def check(name: str) -> str | None:
    """Why ``name`` cannot be loaded (a sentence without the name's context), or None."""
    if name in zone_names():
        return None
    if not zone_names():
        return (f"time zone {name!r}: the tzdata package (a dependency of pdp) is not"
                " installed, and zones are never read from the host")
    if host_dependent(name):
        return (f"{name!r} is not a fixed time zone (it depends on the host, so sidecars"
                " would disagree); name an IANA zone such as Europe/Berlin or UTC")
    close = _folded().get(name.strip().lower())
    hint = f"; did you mean {close!r}?" if close else \
        " (expected a tzdata name such as Europe/Berlin or UTC)"
    return f"unknown IANA time zone {name!r}{hint}"


def zone(name: str) -> ZoneInfo:
    """The zone ``name`` from the bundled tzdata (cached); :class:`UnknownZone` if it is not
    there or is host-dependent."""
    if not isinstance(name, str):
        raise UnknownZone(repr(name), f"expected a time zone name, got {name!r}")
    problem = check(name)
    if problem is not None:
        raise UnknownZone(name, problem)
    return _load(name)


class BundledZone(ZoneInfo):
    """A zone read from the bundled tzdata. Copies and pickles are the same zone by name
    (a plain ``ZoneInfo.from_file`` refuses both), loaded from the bundle again."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return zone, (str(self.key),)

    def __copy__(self) -> BundledZone:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> BundledZone:
        return self


@functools.lru_cache(maxsize=1024)
def _load(name: str) -> ZoneInfo:
    # ``name`` is one the package lists (checked by the caller); refuse path tricks anyway.
    parts = name.split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        raise UnknownZone(name, f"unknown IANA time zone {name!r}")
    resource = importlib.resources.files(_PACKAGE).joinpath("zoneinfo")
    for part in parts:
        resource = resource.joinpath(part)
    try:
        with resource.open("rb") as f:
            return BundledZone.from_file(f, key=name)
    except (OSError, ValueError) as e:
        raise UnknownZone(name, f"time zone {name!r} has no data in the bundled tzdata"
                                f" ({tzdata_version()})") from e


__all__ = ["HOST_ZONES", "BundledZone", "UnknownZone", "check", "host_dependent",
           "tzdata_version", "zone", "zone_names"]


#: ``YYYY-MM-DD[T ]HH:MM[:SS[.frac]]`` then ``Z`` or ``±HH:MM``: RFC 3339 (what Go's parser,
#: and so cel-go's ``timestamp()``, takes). ``datetime.fromisoformat`` also takes ``+05:99``
#: (read as +06:39), offsets with seconds, and YAML's parser takes more.
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)"
                      r"(?:([Zz])|([+-])(\d{2}):(\d{2}))")


def parse_rfc3339(text: str) -> datetime:
    """An instant written with its UTC offset (``Z`` or ``±HH:MM``, hours 00-23, minutes
    00-59); ValueError naming the problem otherwise (a time without an offset included: the
    same text means another instant to a reader in another zone)."""
    m = _RFC3339.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"expected an RFC 3339 timestamp with a UTC offset, e.g."
                         f" 2026-06-15T10:00:00Z or 2026-06-15T12:00:00+02:00, got {text[:64]!r}")
    if m.group(3) and (int(m.group(4)) > 23 or int(m.group(5)) > 59):
        raise ValueError(f"invalid UTC offset {m.group(3)}{m.group(4)}:{m.group(5)} in"
                         f" {text[:64]!r} (hours 00-23, minutes 00-59)")
    local = m.group(1).replace("t", "T").replace(" ", "T")
    if "." in local:  # Python keeps microseconds: cut (never round) the rest
        head, frac = local.split(".")
        local = f"{head}.{frac[:6]}"
    offset = "+00:00" if m.group(2) else f"{m.group(3)}{m.group(4)}:{m.group(5)}"
    return datetime.fromisoformat(local + offset)
