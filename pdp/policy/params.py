"""Typed access to a rule's YAML parameters, with errors that name the field path.

Every typed rule parses its parameters through this, so a bad value anywhere reads the same:
``policies/caps.yaml:12:7: rule.daily_cap.max_count: expected an integer >= 1, got 'ten'``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from pdp import zones
from pdp.cel import CelError
from pdp.cel.domain import compare_versions, quantity
from pdp.policy.model import PolicyError
from pdp.zones import HOST_ZONES as HOST_ZONES  # re-exported: it used to live here
from pdp.zones import parse_rfc3339

# Raise a PolicyError for a field path (relative to the rule's parameters).
Fail = Callable[[tuple[str | int, ...], str], PolicyError]

#: The zone names the bundled tzdata lists (``pdp/zones.py``: the same on every host).
iana_zone_names = zones.zone_names


def shown(raw: object) -> str:
    """A YAML value as the author wrote it, for messages: YAML reads an unquoted date or
    time as one (``2026-12-20`` is a date), and its Python repr would not say so."""
    if isinstance(raw, datetime | date):
        return f"{raw.isoformat()} (YAML read it as a date or time: quote it for a string)"
    if isinstance(raw, bytes | bytearray):
        return "binary data"
    return repr(raw)

class Params:
    """A mapping of parameters plus the path prefix used in error messages."""

    def __init__(self, data: Any, fail: Fail, path: tuple[str | int, ...] = ()) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise fail(path, f"expected a mapping, got {type(data).__name__}")
        self.data = data
        self.fail = fail
        self.path = path
        self.seen: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def error(self, key: str | int, problem: str) -> PolicyError:
        return self.fail((*self.path, key), problem)

    def integer(self, key: str, default: int | None = None, *, minimum: int = 0,
            maximum: int | None = None) -> int:
        raw = self._get(key, default)
        if raw is None:
            raise self.error(key, "required")
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum or (
                maximum is not None and raw > maximum):
            bound = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            raise self.error(key, f"expected an integer {bound}, got {shown(raw)}")
        return raw

    def number(self, key: str, default: float | None = None, *, minimum: float = 0.0,
               maximum: float | None = None) -> float:
        raw = self._get(key, default)
        if raw is None:
            raise self.error(key, "required")
        # NaN passes every bound check (each comparison is false) and then makes every
        # comparison in evaluation false too: refused, as is infinity.
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(
                raw) or raw < minimum or (maximum is not None and raw > maximum):
            bound = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            raise self.error(key, f"expected a finite number {bound}, got {shown(raw)}")
        return float(raw)

    def optional_number(self, key: str) -> float | None:
        return None if self.data.get(key) is None else self.number(key)

    def string(self, key: str, default: str | None = None) -> str:
        raw = self._get(key, default)
        if raw is None:
            raise self.error(key, "required")
        if not isinstance(raw, str):
            raise self.error(key, f"expected a string, got {shown(raw)}")
        return raw

    def boolean(self, key: str, default: bool = False) -> bool:
        raw = self._get(key, default)
        if not isinstance(raw, bool):
            raise self.error(key, f"expected true or false, got {shown(raw)}")
        return raw

    def strings(self, key: str) -> tuple[str, ...]:
        raw = self._get(key, [])
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise self.error(key, f"expected a list of strings, got {shown(raw)}")
        return tuple(raw)

    def items(self, key: str) -> list[Params]:
        raw = self._get(key, [])
        if not isinstance(raw, list):
            raise self.error(key, f"expected a list, got {shown(raw)}")
        return [Params(item, self.fail, (*self.path, key, i)) for i, item in enumerate(raw)]

    def mapping(self, key: str) -> Params:
        return Params(self._get(key, {}), self.fail, (*self.path, key))

    def timezone(self, key: str = "timezone") -> ZoneInfo:
        """An IANA zone name exactly as tzdata spells it (``UTC``, ``Etc/GMT-2``, ...).

        Why so strict: ``localtime`` (and a case-folded name on a case-insensitive file
        system) loads on some hosts and means that host's own zone, so sidecars would
        disagree about the day or the hour. For the same reason the rules come from the
        bundled ``tzdata`` package, never the host's files (``pdp/zones.py``)."""
        name = self.string(key, "UTC")
        try:
            return zones.zone(name)  # the bundled tzdata's rules, never the host's
        except zones.UnknownZone as e:
            raise self.error(key, e.problem) from None

    def version(self, key: str) -> str:
        """A dotted version (``"10"``, ``"16.4.1"``, ``v2.1.0-rc1``); an integer is taken as
        written. A float is refused: YAML reads ``16.10`` as 16.1."""
        raw = self._get(key, None)
        if raw is None:
            raise self.error(key, "required")
        if isinstance(raw, float):
            raise self.error(key, f"write the version as a string ('{raw}' in quotes): YAML"
                                  " reads an unquoted 16.10 as the number 16.1")
        if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            raw = str(raw)
        if not isinstance(raw, str) or not valid_version(raw):
            raise self.error(key, f"expected a version like '10' or '16.4.1', got {shown(raw)}")
        return raw.strip()

    def timestamp(self, key: str) -> datetime:
        raw = self._get(key, None)
        if isinstance(raw, str):  # YAML keeps times as written (yamlpos): read strictly
            try:
                raw = parse_rfc3339(raw)
            except ValueError as exc:
                if "offset" in str(exc) and "invalid" in str(exc):
                    raise self.error(key, str(exc)) from None
                if raw.strip()[:10].count("-") == 2 and not re.search(r"([Zz]|[+-]\d\d:\d\d)$",
                                                                    raw.strip()):
                    raise self.error(key, "timestamp needs a UTC offset, e.g."
                                          " 2026-12-20T00:00:00Z") from None
                raise self.error(key, f"expected an RFC 3339 timestamp with a UTC offset,"
                                      f" got {shown(raw)}") from None
        if not isinstance(raw, datetime):
            raise self.error(key, f"expected an ISO 8601 timestamp with offset, got {shown(raw)}")
        if raw.tzinfo is None:
            raise self.error(key, "timestamp needs a UTC offset, e.g. 2026-12-20T00:00:00Z")
        return raw

    def quantity(self, key: str, default: int | None = None) -> int:
        """Byte quantity: an integer, or a string like "4GB" / "512MiB"."""
        raw = self._get(key, default)
        if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            return raw
        if isinstance(raw, str):
            parsed = parse_quantity(raw)
            if parsed is not None:
                return parsed
        raise self.error(key, f"expected a byte quantity like 4GB or 512MiB, got {shown(raw)}")

    def reject_unknown(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self.seen)
        if unknown:
            raise self.error(unknown[0], "unknown field")


def valid_version(text: str) -> bool:
    """Whether ``text`` is a version the device rules can compare."""
    try:
        compare_versions(text.strip(), text.strip())
    except CelError:
        return False
    return True


def parse_quantity(text: str) -> int | None:
    """Bytes in "4GB" / "512MiB" (the CEL ``quantity()`` helper's rules), or None."""
    try:
        return quantity(text)
    except CelError:
        return None
