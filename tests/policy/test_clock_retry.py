"""Clock rules say when to retry (the next local instant they allow, across DST) and show the
wall clock with its offset (the two 01:30s of a fall-back night are told apart)."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace

import pytest

from pdp import zones
from pdp.policy.rules import AllowedHours, BlockedDays

NY = zones.zone("America/New_York")


def ctx(now: str) -> SimpleNamespace:
    return SimpleNamespace(now=datetime.fromisoformat(now))


@pytest.mark.parametrize(("now", "wall", "hours"), [
    # fall back: 01:30 EDT (first of the two), allowed again at 09:00 EST = 14:00Z
    ("2026-11-01T05:30:00+00:00", "01:30 (UTC-04:00)", 8.5),
    # the second 01:30 (EST), same 09:00 EST
    ("2026-11-01T06:30:00+00:00", "01:30 (UTC-05:00)", 7.5),
    # spring forward: 01:30 EST, the 02:xx hour does not exist, 09:00 EDT = 13:00Z
    ("2026-03-08T06:30:00+00:00", "01:30 (UTC-05:00)", 6.5),
    # after the window, the next day
    ("2026-06-15T22:00:00+00:00", "18:00 (UTC-04:00)", 15.0),
])
def test_allowed_hours_retry_is_the_next_allowed_local_instant(
        now: str, wall: str, hours: float) -> None:
    deny = AllowedHours(9, 17, NY).evaluate(ctx(now))  # type: ignore[arg-type]
    assert deny is not None and deny.code == "OUTSIDE_ALLOWED_HOURS"
    assert f"local time is {wall}" in deny.message
    assert deny.retry_after_s == pytest.approx(hours * 3600)


def test_a_window_across_midnight_retries_at_its_start() -> None:
    deny = AllowedHours(22, 2, NY).evaluate(ctx("2026-06-15T16:00:00+00:00"))  # type: ignore[arg-type]
    assert deny is not None and deny.retry_after_s == pytest.approx(10 * 3600)  # 22:00 EDT


def test_blocked_days_retry_at_the_next_local_midnight_of_an_allowed_day() -> None:
    weekend = BlockedDays(frozenset({5, 6}), zones.zone("Asia/Kathmandu"))  # +05:45
    deny = weekend.evaluate(ctx("2026-12-05T12:00:00+00:00"))  # type: ignore[arg-type]
    assert deny is not None and "2026-12-05 17:45 (UTC+05:45)" in deny.message
    assert deny.retry_after_s == pytest.approx(30.25 * 3600)  # Monday 00:00 = Sun 18:15Z


def test_every_day_blocked_gives_no_retry_hint() -> None:
    deny = BlockedDays(frozenset(range(7)), NY).evaluate(ctx("2026-12-05T12:00:00+00:00"))  # type: ignore[arg-type]
    assert deny is not None and deny.retry_after_s is None


@pytest.mark.parametrize(("rule", "now", "seconds"), [
    # Casey's clocks jumped from 00:01 to 03:01 local (2020-10-04): the window opens at
    # 03:01 = 16:01Z, not at the next UTC quarter hour
    (AllowedHours(3, 9, zones.zone("Antarctica/Casey")), "2020-10-03T15:50:00+00:00", 660),
    # St. John's went back from Sunday 00:01 to Saturday 23:01: Saturday again 30 s later
    (BlockedDays(frozenset({6}), zones.zone("America/St_Johns")), "2008-11-02T02:30:30+00:00",
     30),
    # an offset of -00:44:30 puts 09:00 local at 09:44:30Z
    (AllowedHours(9, 17, zones.zone("Africa/Monrovia")), "1971-06-01T08:00:00+00:00", 6270),
])
def test_the_retry_hint_is_exact_when_a_boundary_is_off_the_quarter_hour(
        rule: AllowedHours | BlockedDays, now: str, seconds: int) -> None:
    deny = rule.evaluate(ctx(now))  # type: ignore[arg-type]
    assert deny is not None and deny.retry_after_s == pytest.approx(seconds)


@pytest.mark.parametrize("now", ["9999-12-31T23:00:00+00:00", "0001-01-01T00:00:00+00:00"])
def test_a_local_time_outside_the_calendar_denies_saying_so(now: str) -> None:
    """Only a pinned clock gets there; the deny says why instead of an OverflowError."""
    from pdp.policy.rules import OutsideCalendar

    kiritimati = zones.zone("Pacific/Kiritimati")  # UTC+14: its local date leaves the range
    for rule in (AllowedHours(9, 17, kiritimati), BlockedDays(frozenset({4}), kiritimati)):
        with pytest.raises(OutsideCalendar, match="outside the calendar"):
            rule.evaluate(ctx(now))  # type: ignore[arg-type]
    near = AllowedHours(9, 17, kiritimati).evaluate(ctx("9999-12-31T09:59:00+00:00"))  # type: ignore[arg-type]
    assert near is not None and near.code == "OUTSIDE_ALLOWED_HOURS"
    assert near.retry_after_s is None  # the next allowed instant is past 9999
