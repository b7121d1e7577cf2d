"""Daily caps at the ends of the calendar (a pinned clock only): counted on the days that
exist, and a local date outside years 1-9999 is an error that says so, never OverflowError."""

from __future__ import annotations

import datetime as dt

import pytest

from pdp.counters import CounterKind, CounterRule, ManualClock, MemoryCounterStore


def cap(tz: str) -> CounterRule:
    return CounterRule("cap@v1", CounterKind.DAILY_CAP, "agent:a1", max_count=1,
                       timezone=tz, counter_id="cap")


@pytest.mark.parametrize(("at", "tz"), [("9999-12-30T12:00:00+00:00", "UTC"),
                                        ("9999-12-31T23:00:00+00:00", "America/New_York"),
                                        ("0001-01-02T12:00:00+00:00", "UTC")])
async def test_a_cap_counts_on_the_last_and_first_days(at: str, tz: str) -> None:
    clock = ManualClock(dt.datetime.fromisoformat(at).timestamp())
    store = MemoryCounterStore(clock)
    assert (await store.reserve("t", [cap(tz)], timeout=1.0)).allowed
    assert not (await store.reserve("t", [cap(tz)], timeout=1.0)).allowed


async def test_a_local_date_outside_the_calendar_is_an_error_that_says_so() -> None:
    clock = ManualClock(dt.datetime.fromisoformat("9999-12-31T23:00:00+00:00").timestamp())
    store = MemoryCounterStore(clock)
    with pytest.raises(ValueError, match="outside the calendar"):
        await store.reserve("t", [cap("Pacific/Kiritimati")], timeout=1.0)


def test_a_skipped_date_leaves_a_margin_before_today() -> None:
    """Samoa skipped 2011-12-30: as "yesterday" it lasts no time, so the day table reaches
    back past it and a clock a second behind (Redis's, a sidecar's) still finds its day."""
    from pdp.counters.days import day_table

    at = dt.datetime.fromisoformat("2011-12-31T00:00:00.5+14:00").timestamp()
    table = day_table("Pacific/Apia", at)
    assert table.locate(int(at * 1000))[0] == "2011-12-31"  # type: ignore[index]
    assert table.locate(int(at * 1000) - 1000)[0] == "2011-12-29"  # type: ignore[index]
