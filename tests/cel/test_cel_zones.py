"""CEL time zones: bundled tzdata only, no host-dependent names, strict fixed offsets."""

from __future__ import annotations

import datetime as dt

import pytest

from pdp.cel import CelError, CelEvalError, pdp_environment
from tests.support.tzfiles import bundled

NOW = dt.datetime(2026, 11, 16, 16, 30, tzinfo=dt.UTC)




def run(expr: str, tz: str | None = None) -> object:
    """Evaluate ``expr``; ``config.tz`` is ``tz`` (a value, not a literal: checked at run
    time, whatever the environment checks in literals when compiling)."""
    return pdp_environment().compile(expr).evaluate({"now": NOW, "config": {"tz": tz}})


def zoned(fn: str, tz: str) -> object:
    return run(f"now.{fn}(config.tz)", tz)


def test_named_zone_uses_the_bundled_rules() -> None:
    want = NOW.astimezone(bundled("America/Vancouver"))
    assert zoned("getHours", "America/Vancouver") == want.hour
    assert zoned("getMinutes", "America/Vancouver") == want.minute
    assert run('now.getHours("America/Vancouver")') == want.hour


@pytest.mark.parametrize("name", ["localtime", "posixrules", "Factory", "local"])
def test_host_dependent_names_are_refused(name: str) -> None:
    with pytest.raises(CelEvalError, match=f"unknown time zone '{name}'.*depends on the host"):
        zoned("getHours", name)
    with pytest.raises(CelError, match=f"unknown time zone '{name}'.*depends on the host"):
        run(f'now.getHours("{name}")')  # as a literal: refused at compile or at run time


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/localtime", "/etc/localtime",
                                  "europe/berlin"])
def test_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(CelEvalError, match="unknown time zone"):
        zoned("getHours", name)


@pytest.mark.parametrize(("tz", "hours", "minutes"), [
    ("+05:30", 22, 0), ("-05:30", 11, 0), ("02:00", 18, 30), ("-00:00", 16, 30),
    ("+23:59", 16, 29), ("-23:59", 16, 31), ("+00:59", 17, 29),
])
def test_valid_offsets(tz: str, hours: int, minutes: int) -> None:
    assert (zoned("getHours", tz), zoned("getMinutes", tz)) == (hours, minutes)
    assert run(f'now.getHours("{tz}")') == hours


@pytest.mark.parametrize("tz", ["+05:99", "+05:60", "+24:00", "-24:00", "+99:99", "+5:00",
                                "+05:0", "+0500", "+05:00:00", "++05:00", "a:b", " +05:00",
                                "+\u0660\u0665:\u0660\u0660"])
def test_invalid_offsets_name_the_offset(tz: str) -> None:
    with pytest.raises(CelEvalError) as ei:
        zoned("getHours", tz)
    assert f"invalid UTC offset {tz!r}" in str(ei.value)
    assert "ValueError" not in str(ei.value)
    with pytest.raises(CelError, match="invalid UTC offset"):
        run(f'now.getHours("{tz}")')


@pytest.mark.parametrize(("text", "iso"), [
    ("2026-01-01T00:00:00+05:30", "2025-12-31T18:30:00+00:00"),
    ("2026-01-01T00:00:00-23:59", "2026-01-01T23:59:00+00:00"),
    ("2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"),
    ("2026-01-01T00:00:00z", "2026-01-01T00:00:00+00:00"),
])
def test_timestamp_offsets_accepted(text: str, iso: str) -> None:
    got = run("timestamp(config.tz)", text)
    assert got.to_datetime().isoformat() == iso  # type: ignore[attr-defined]


@pytest.mark.parametrize("off", ["+99:99", "+24:00", "-24:00", "+05:60", "+05:99"])
def test_timestamp_offsets_refused(off: str) -> None:
    with pytest.raises(CelEvalError, match=f"invalid UTC offset '\\{off}'"):
        run("timestamp(config.tz)", f"2026-01-01T00:00:00{off}")
    with pytest.raises(CelError, match=f"invalid UTC offset '\\{off}'"):
        run(f'timestamp("2026-01-01T00:00:00{off}")')


@pytest.mark.parametrize("text", ["2026-01-01T00:00:00", "2026-01-01T00:00:00+0530",
                                  "\uff12\uff10\uff12\uff16-01-01T00:00:00Z"])
def test_timestamp_without_a_valid_offset_is_refused(text: str) -> None:
    with pytest.raises(CelEvalError, match="cannot parse timestamp"):
        run("timestamp(config.tz)", text)


def test_local_time_out_of_range_is_an_eval_error() -> None:
    with pytest.raises(CelEvalError, match="out of range") as ei:
        run('timestamp("9999-12-31T23:59:59Z").getHours(config.tz)', "+23:00")
    assert "OverflowError" not in str(ei.value)
