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
