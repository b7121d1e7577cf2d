"""`pdp test` and `pdp replay --since` refuse a time without a UTC offset (never read as UTC)."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest

from pdp.authoring import unit_tests
from pdp.authoring.harness import Sandbox, parse_time
from pdp.authoring.replay import parse_since

POLICY = """\
tenant: acme
name: office-hours
rule: {allowed_hours: {start_hour: 9, end_hour: 17, timezone: Europe/Berlin}}
"""
REQUEST = "request: {kind: push, tenant: acme, agent: {id: a1}, config: {}}"
NEEDS = "now: a timestamp needs a UTC offset, e.g. 2026-06-15T10:00:00Z or +02:00"


def run(tmp_path: Path, now: str, allowed: bool = True) -> tuple[int, str]:
    (tmp_path / "p.yaml").write_text(POLICY)
    (tmp_path / "p.test.yaml").write_text(
        f"- name: case\n  {REQUEST}\n  now: {now}\n  expect: {{allowed: {str(allowed).lower()}}}\n")
    out = io.StringIO()
    code = unit_tests.main(str(tmp_path), out=out)
    return code, out.getvalue()


@pytest.mark.parametrize("now", ['"2026-06-15T10:00:00"', "2026-06-15T10:00:00",
                                 '"2026-06-15 10:00:00"', "2026-06-15 10:00:00",
                                 "2026-06-15", '"2026-06-15"'])
def test_naive_now_fails_the_case_naming_the_field(tmp_path: Path, now: str) -> None:
    code, text = run(tmp_path, now)
    assert code == 1, text
    assert NEEDS in text


@pytest.mark.parametrize(("now", "allowed"), [
    ('"2026-06-15T10:00:00Z"', True),        # 12:00 in Berlin
    ("2026-06-15T10:00:00+02:00", True),     # YAML reads an aware datetime
    ('"2026-06-15T18:00:00+02:00"', False),  # 18:00 in Berlin
    ("2026-06-15 16:30:00Z", False),         # 18:30 in Berlin
])
def test_now_with_an_offset_is_used(tmp_path: Path, now: str, allowed: bool) -> None:
    code, text = run(tmp_path, now, allowed)
    assert code == 0, text


@pytest.mark.parametrize("value", ["2026-06-15T10:00:00", "2026-06-15 10:00:00", "2026-06-15",
                                   dt.datetime(2026, 6, 15, 10), dt.date(2026, 6, 15)])
def test_parse_time_refuses_naive(value: object) -> None:
    with pytest.raises(ValueError, match="needs a UTC offset"):
        parse_time(value)


def test_parse_time_keeps_the_offset() -> None:
    got = parse_time("2026-06-15T10:00:00+02:00")
    assert got == dt.datetime(2026, 6, 15, 8, tzinfo=dt.UTC)
    assert parse_time("2026-06-15T10:00:00Z") == dt.datetime(2026, 6, 15, 10, tzinfo=dt.UTC)


def test_sandbox_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="needs a UTC offset"):
        Sandbox.of([]).set_time(dt.datetime(2026, 6, 15, 10))


def test_replay_since_refuses_naive() -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since("2026-06-15T10:00:00")
    assert parse_since("2026-06-15T10:00:00Z") == dt.datetime(2026, 6, 15, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize("now", ["2026-06-15T10:00:00+05:99", '"2026-06-15T10:00:00+05:99"',
                                 "2026-06-15T10:00:00+05:30:10", "2026-06-15T10:00:00+24:00"])
def test_an_offset_out_of_range_is_refused_not_read_as_another(tmp_path: Path,
                                                               now: str) -> None:
    """YAML's parser and datetime.fromisoformat read +05:99 as +06:39: the case is refused,
    as CEL's timestamp() refuses it, instead of running 39 minutes off."""
    code, text = run(tmp_path, now)
    assert code == 1 and "now:" in text and ("offset" in text or "RFC 3339" in text), text
    with pytest.raises(ValueError):
        parse_since("2026-06-15T10:00:00+05:99")
