"""Local-day boundaries for DAILY_CAP, computed with zoneinfo (DST-correct).

Lua has no timezone database, so Python hands the script a short table: the UTC instants
of the local midnights around the sidecar's "now" and the dates they open. The script
picks the day that contains *its* time (Redis ``TIME``), so a sidecar whose clock is a few
minutes (up to about a day) off still lands on the same day key as every other sidecar.
A day starts at the first instant whose local date is that day (if midnight does not
exist, at the end of the DST gap), so days are 23, 24 or 25 hours long.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from dataclasses import dataclass

from pdp.counters.model import zone

_DAYS_BEFORE = 1
_DAYS_AFTER = 2


@dataclass(frozen=True, slots=True)
class DayTable:
    """``labels[i]`` is the local date that runs from ``bounds_ms[i]`` to ``bounds_ms[i+1]``."""

    tz: str
    bounds_ms: tuple[int, ...]
    labels: tuple[str, ...]

    def locate(self, t_ms: int) -> tuple[str, int] | None:
        """The local date containing ``t_ms`` and the instant it ends, if in the table."""
        b = self.bounds_ms
        for i, label in enumerate(self.labels):
            if b[i] <= t_ms < b[i + 1]:
                return label, b[i + 1]
        return None


def local_midnight_ms(tz: str, day: dt.date) -> int:
    """UTC instant (ms) at which local date ``day`` starts in ``tz``: its midnight, the first
    one where midnight repeats, and where midnight falls in a gap, the gap's end (the first
    instant whose local date is ``day``: Toronto 1919 jumped 23:30 -> 00:30, and fold=0
    alone lands at 01:00, half an hour into the day)."""
    z = zone(tz)
    first = dt.datetime(day.year, day.month, day.day, tzinfo=z)  # fold=0
    at = int(first.timestamp())
    other = int(first.replace(fold=1).timestamp())
    if other >= at:  # not in a gap (equal; or, where midnight repeats, fold=0 is first)
        return at * 1000
    lo, hi = other, at  # in a gap: the local date changes somewhere in between
    if dt.datetime.fromtimestamp(lo, z).date() >= day:
        return lo * 1000
    while hi - lo > 1:  # the first second whose local date is ``day`` (transitions fall on seconds)
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, z).date() >= day:
            hi = mid
        else:
            lo = mid
    return hi * 1000


@functools.lru_cache(maxsize=1024)
def _table(tz: str, center: dt.date) -> DayTable:
    """At the ends of the calendar (0001-01-01, 9999-12-31) the table is shorter: the days
    past them do not exist, and the last day's end is its start plus 24 h (an OverflowError
    here denied a push with an internal error)."""
    days: list[dt.date] = []
    for d in range(-_DAYS_BEFORE, _DAYS_AFTER + 2):
        with contextlib.suppress(OverflowError):
            days.append(center + dt.timedelta(days=d))
    bounds = [local_midnight_ms(tz, d) for d in days]
    labels = [d.isoformat() for d in days]
    if (days[-1] - center).days == _DAYS_AFTER + 1:
        labels.pop()  # the day after the last labelled one only bounds it
    else:  # clipped at 9999-12-31: its end
        bounds.append(bounds[-1] + 86_400_000)
    # A date the zone skipped (Pacific/Apia 2011-12-30) lasts no time: as "yesterday" it
    # would leave no margin before today, and a sidecar a second ahead of Redis would find
    # Redis's now outside the table. Reach back past it.
    while len(bounds) > 1 and bounds[1] - bounds[0] <= 0 and days[0] > dt.date.min:
        days.insert(0, days[0] - dt.timedelta(days=1))
        bounds.insert(0, local_midnight_ms(tz, days[0]))
        labels.insert(0, days[0].isoformat())
    return DayTable(tz, tuple(bounds), tuple(labels))


def day_table(tz: str, around: float) -> DayTable:
    """Days from yesterday to the day after tomorrow, local to ``tz``, around ``around``."""
    try:
        center = dt.datetime.fromtimestamp(around, zone(tz)).date()
        return _table(tz, center)
    except OverflowError:  # a local date outside years 1-9999 (only a pinned clock gets there)
        raise ValueError(f"the local date in {tz} at this time is outside the calendar"
                         " (years 1-9999): no daily cap can count it") from None


def format_instant(t_ms: int, tz: str) -> str:
    """An operator-readable local time with its offset, e.g. ``2026-11-24T00:00+01:00``."""
    try:
        return dt.datetime.fromtimestamp(t_ms / 1000, zone(tz)).isoformat(timespec="minutes")
    except (ValueError, OverflowError):  # the end of 9999-12-31: no later day to name
        return "the end of the calendar (year 9999)"
