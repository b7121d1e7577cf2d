"""pdp/zones.py: zones come from the bundled tzdata package, never the host's files."""

from __future__ import annotations

import copy
import datetime as dt
import pickle
import zoneinfo

import pytest

from pdp import zones
from tests.support.tzfiles import bundled

# BC moved to permanent UTC-7 from 2026-11-01 (tzdata 2026a and later); older host data
# (Debian's 2025b here) still has it fall back to UTC-8 that day.
INSTANT = dt.datetime(2026, 11, 16, 16, 30, tzinfo=dt.UTC)
NAME = "America/Vancouver"




def host(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo.no_cache(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def test_zone_gives_the_bundled_answer_not_the_hosts() -> None:
    z = zones.zone(NAME)
    assert z.key == NAME and str(z) == NAME
    want = INSTANT.astimezone(bundled(NAME))
    got = INSTANT.astimezone(z)
    assert (got.hour, got.minute, got.utcoffset()) == (want.hour, want.minute,
                                                          want.utcoffset())
    h = host(NAME)
    if h is not None and INSTANT.astimezone(h).utcoffset() != want.utcoffset():
        # this host's files disagree with the bundle: the host's answer is not ours
        assert got.utcoffset() != INSTANT.astimezone(h).utcoffset()


def test_bundle_is_recent_enough_for_the_vancouver_case() -> None:
    if zones.tzdata_version() < "2026a":
        pytest.skip(f"bundled tzdata {zones.tzdata_version()} predates BC's change")
    assert INSTANT.astimezone(zones.zone(NAME)).strftime("%H:%M") == "09:30"


def test_every_listed_zone_agrees_with_its_bundled_file() -> None:
    for name in sorted(zones.zone_names())[::25]:
        want = INSTANT.astimezone(bundled(name)).utcoffset()
        assert INSTANT.astimezone(zones.zone(name)).utcoffset() == want, name


def test_zone_is_cached_and_survives_copy_and_pickle() -> None:
    z = zones.zone("Europe/Berlin")
    assert zones.zone("Europe/Berlin") is z
    assert copy.copy(z) is z and copy.deepcopy(z) is z
    assert pickle.loads(pickle.dumps(z)) is z


@pytest.mark.parametrize("name", ["localtime", "posixrules", "Factory", "factory", "local",
                                  "", " localtime "])
def test_host_dependent_names_are_refused(name: str) -> None:
    with pytest.raises(zones.UnknownZone, match="depends on the host"):
        zones.zone(name)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/localtime", "/usr/share/zoneinfo/UTC",
                                  "Europe/../Europe/Berlin", "Europe//Berlin", "Europe\\Berlin",
                                  "Europe/Berlin\0", "posix/Europe/Berlin",
                                  "right/Europe/Berlin", "Mars/Olympus", "zoneinfo/UTC",
                                  "tzdata.zi"])
def test_path_tricks_and_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(zones.UnknownZone, match="unknown IANA time zone"):
        zones.zone(name)


def test_case_folded_name_gets_a_hint() -> None:
    with pytest.raises(zones.UnknownZone, match="did you mean 'Europe/Berlin'"):
        zones.zone("europe/berlin")


def test_not_a_string_is_refused() -> None:
    with pytest.raises(zones.UnknownZone):
        zones.zone(3)  # type: ignore[arg-type]


def test_common_names_load() -> None:
    for name in ("UTC", "Etc/GMT-2", "US/Central", "CET", "Asia/Kathmandu"):
        assert zones.zone(name).key == name
