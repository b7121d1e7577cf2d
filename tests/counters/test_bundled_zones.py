"""DAILY_CAP days follow the bundled tzdata, never the host's zone files."""

from __future__ import annotations

import datetime as dt

import pytest

from pdp.counters.days import day_table, local_midnight_ms
from pdp.counters.model import CounterKind, CounterRule, zone
from tests.support.tzfiles import bundled

NAME = "America/Vancouver"
DAY = dt.date(2026, 11, 16)




def test_zone_is_the_bundled_one() -> None:
    instant = dt.datetime(2026, 11, 16, 16, 30, tzinfo=dt.UTC)
    assert instant.astimezone(zone(NAME)).utcoffset() == \
        instant.astimezone(bundled(NAME)).utcoffset()


def test_local_midnight_follows_the_bundle() -> None:
    want = int(dt.datetime(DAY.year, DAY.month, DAY.day, tzinfo=bundled(NAME)).timestamp()
               * 1000)
    assert local_midnight_ms(NAME, DAY) == want
    table = day_table(NAME, want / 1000 + 3600)
    assert want in table.bounds_ms
    assert table.labels[table.bounds_ms.index(want)] == DAY.isoformat()


@pytest.mark.parametrize("name", ["localtime", "posixrules", "Factory", "../../etc/passwd",
                                  "Mars/Olympus"])
def test_daily_cap_refuses_unknown_and_host_dependent_zones(name: str) -> None:
    with pytest.raises(ValueError, match="time zone"):
        CounterRule(rule_id="r", kind=CounterKind.DAILY_CAP, scope_key="s", max_count=1,
                    timezone=name)


@pytest.mark.parametrize(("tz", "day", "starts"), [
    # Toronto 1919: clocks jumped from 23:30 EST to 00:30 EDT; the day starts at 00:30
    ("America/Toronto", dt.date(1919, 3, 31), "1919-03-31T00:30:00-04:00"),
    # Midnight itself skipped (Santiago, Havana): the day starts at 01:00
    ("America/Santiago", dt.date(2026, 9, 6), "2026-09-06T01:00:00-03:00"),
    ("America/Havana", dt.date(2026, 3, 8), "2026-03-08T01:00:00-04:00"),
    ("Europe/Berlin", dt.date(2026, 3, 29), "2026-03-29T00:00:00+01:00"),
])
def test_a_day_starts_at_the_first_instant_of_its_date(tz: str, day: dt.date,
                                                      starts: str) -> None:
    """Where midnight falls in a DST gap the day starts where the gap ends, not at the
    instant fold=0 gives (half an hour into the day in Toronto 1919): the second before
    still has the previous date, as blocked_days sees it."""
    ms = local_midnight_ms(tz, day)
    assert ms == int(dt.datetime.fromisoformat(starts).timestamp() * 1000)
    z = zone(tz)
    assert dt.datetime.fromtimestamp(ms / 1000 - 1, z).date() < day
    assert dt.datetime.fromtimestamp(ms / 1000, z).date() == day
