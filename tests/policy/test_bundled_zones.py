"""Typed rules read time zones from the bundled tzdata and refuse host-dependent names."""

from __future__ import annotations

import datetime as dt

import pytest

from pdp.policy.loader import load_text
from pdp.policy.model import PolicyError
from pdp.policy.rules import AllowedHours, BlockedDays, local_time
from tests.support.tzfiles import bundled

NOW = dt.datetime(2026, 11, 16, 16, 30, tzinfo=dt.UTC)




def hours(tz: str) -> str:
    return ("tenant: t\nname: a\nrule:\n  allowed_hours:\n    start_hour: 9\n"
            f"    end_hour: 17\n    timezone: {tz!r}\n")


def test_allowed_hours_uses_the_bundled_rules() -> None:
    [p] = load_text(hours("America/Vancouver"))
    assert isinstance(p.rule, AllowedHours)
    assert p.rule.tz.key == "America/Vancouver"
    want = NOW.astimezone(bundled("America/Vancouver"))
    got = local_time(NOW, p.rule.tz)
    assert (got.hour, got.minute, got.utcoffset()) == (want.hour, want.minute,
                                                          want.utcoffset())


def test_blocked_days_uses_the_bundled_rules() -> None:
    text = "tenant: t\nname: a\nrule: {blocked_days: {days: [monday], timezone: UTC}}\n"
    [p] = load_text(text)
    assert isinstance(p.rule, BlockedDays) and p.rule.tz.key == "UTC"


@pytest.mark.parametrize("name", ["localtime", "posixrules", "Factory", "factory"])
def test_host_dependent_names_are_refused(name: str) -> None:
    with pytest.raises(PolicyError, match="depends on the host") as ei:
        load_text(hours(name))
    assert "rule.allowed_hours.timezone" in str(ei.value)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/localtime", "posix/UTC",
                                  "Mars/Olympus"])
def test_path_tricks_are_refused(name: str) -> None:
    with pytest.raises(PolicyError, match="unknown IANA time zone"):
        load_text(hours(name))


def test_case_folded_name_gets_a_hint() -> None:
    with pytest.raises(PolicyError, match="did you mean 'America/Vancouver'"):
        load_text(hours("america/vancouver"))
