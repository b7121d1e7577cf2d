"""One mail per UTC day per policy, counted when sent, across two notifiers (two sidecars)
sharing one Redis, and across restarts sharing one SQLite file."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from pdp.notify import (
    FAILED,
    SENT,
    SUPPRESSED,
    EmailChannel,
    Notifier,
    NotifySettings,
    RedisNotifyState,
    SqliteNotifyState,
)
from pdp.notify.store import ALREADY_SENT, BUSY, CLAIMED, NotifyState
from tests.notify.conftest import SmtpSink
from tests.support.procs import RedisServer, free_port, redis_server

SUMMARY = {"decision_id": "d-1", "checkpoint": "push", "reasons": ["DAILY_CAP_EXCEEDED"]}
MAIL = [EmailChannel(to=("oncall@example.com",))]


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as srv:
        yield srv


def settings(port: int, **kw: Any) -> NotifySettings:
    return NotifySettings(smtp_port=port, backoff_initial_s=0.01,
                          backoff_max_s=0.05, **kw)


@pytest.fixture
async def two_sidecars(
    redis_srv: RedisServer, smtp_sink: SmtpSink
) -> AsyncIterator[tuple[Notifier, Notifier]]:
    ns = [Notifier(settings(smtp_sink.port, redis_url=redis_srv.url)) for _ in range(2)]
    for n in ns:
        await n.start()
    try:
        yield ns[0], ns[1]
    finally:
        for n in ns:
            await n.close()


def total(ns: tuple[Notifier, ...], outcome: str) -> int:
    return sum(n.counts().get(("email", outcome), 0) for n in ns)


async def test_one_mail_per_policy_per_day_across_sidecars(
    two_sidecars: tuple[Notifier, Notifier], smtp_sink: SmtpSink
) -> None:
    a, b = two_sidecars
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    # both sidecars see the same policy deny, concurrently, many times
    for _ in range(5):
        a.notify("freeze-window", tenant, SUMMARY, MAIL)
        b.notify("freeze-window", tenant, SUMMARY, MAIL)
    assert await a.drain(10) and await b.drain(10)
    assert len(smtp_sink.messages) == 1
    assert total((a, b), SENT) == 1
    assert total((a, b), SUPPRESSED) == 9

    # another policy, and the same policy of another tenant, each get their own mail
    a.notify("max-daily", tenant, SUMMARY, MAIL)
    b.notify("freeze-window", tenant + "-other", SUMMARY, MAIL)
    b.notify("max-daily", tenant, SUMMARY, MAIL)
    assert await a.drain(10) and await b.drain(10)
    subjects = sorted(str(m["Subject"]) for m in smtp_sink.messages)
    assert len(subjects) == 3, subjects
    assert sum("max-daily" in s for s in subjects) == 1


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_slot_is_taken_when_sent_and_freed_when_sending_fails(
    kind: str, tmp_path: Path, redis_srv: RedisServer
) -> None:
    state: NotifyState = (SqliteNotifyState(str(tmp_path / "n.sqlite3")) if kind == "sqlite"
                          else RedisNotifyState(redis_srv.url))
    t = f"t-{uuid.uuid4().hex[:8]}"
    try:
        assert await state.claim_email(t, "p", "2030-01-01", "a", 60) == CLAIMED
        assert await state.claim_email(t, "p", "2030-01-01", "b", 60) == BUSY
        await state.release_email(t, "p", "2030-01-01", "a")  # a's send failed
        assert await state.claim_email(t, "p", "2030-01-01", "b", 60) == CLAIMED
        await state.confirm_email(t, "p", "2030-01-01", "b")  # b's went out
        assert await state.claim_email(t, "p", "2030-01-01", "c", 60) == ALREADY_SENT
        await state.release_email(t, "p", "2030-01-01", "b")  # a late release changes nothing
        assert await state.claim_email(t, "p", "2030-01-01", "c", 60) == ALREADY_SENT
        # the next UTC day has a slot of its own
        assert await state.claim_email(t, "p", "2030-01-02", "c", 60) == CLAIMED
        # a lease that ran out (a crashed attempt) frees the slot
        assert await state.claim_email(t, "q", "2030-01-02", "x", 0.001) == CLAIMED
        await asyncio.sleep(0.01)
        assert await state.claim_email(t, "q", "2030-01-02", "y", 60) == CLAIMED
    finally:
        await state.close()


async def test_smtp_down_at_first_deny_then_back_sends_one_mail(tmp_path: Path) -> None:
    """The first deny's attempts fail (nothing listens); the slot stays free; once the
    SMTP server is up, exactly one mail goes out — and none after a restart that day."""
    port = free_port()
    state = str(tmp_path / "notify.sqlite3")
    n = Notifier(settings(port, state_path=state))
    await n.start()
    sink = SmtpSink(port=port)
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    try:
        n.notify("p", "t", SUMMARY, MAIL)
        while n.counts().get(("email", "retried"), 0) < 5:
            await asyncio.sleep(0.01)
        ctl.start()
        n.notify("p", "t", SUMMARY, MAIL)  # a later deny
        assert await n.drain(10)
        await n.close()
        assert len(sink.messages) == 1
        assert n.counts()[("email", SENT)] == 1 and n.counts()[("email", SUPPRESSED)] == 1
        again = Notifier(settings(port, state_path=state))  # a restart the same day
        await again.start()
        again.notify("p", "t", SUMMARY, MAIL)
        assert await again.drain(10)
        await again.close()
        assert len(sink.messages) == 1
        assert again.counts()[("email", SUPPRESSED)] == 1
    finally:
        await n.close()
        ctl.stop()


async def test_redis_down_holds_notifications_until_it_is_back(smtp_sink: SmtpSink) -> None:
    """Redis unreachable: nothing is lost or sent twice; delivery resumes when it is back."""
    with redis_server() as srv:
        srv.kill()
        n = Notifier(settings(smtp_sink.port, redis_url=srv.url, redis_timeout_s=0.2))
        await n.start()
        try:
            for _ in range(3):
                n.notify("p", "t", SUMMARY, MAIL)
            assert not await n.drain(0.3)
            srv.start()
            assert await n.drain(20)
        finally:
            await n.close()
    assert len(smtp_sink.messages) == 1
    assert n.counts()[("email", SENT)] == 1 and n.counts()[("email", SUPPRESSED)] == 2


async def test_failed_smtp_is_counted_not_raised() -> None:
    n = Notifier(NotifySettings(smtp_port=free_port(), max_attempts=2, backoff_initial_s=0.01,
                                attempt_timeout_s=1.0))
    await n.start()
    try:
        n.notify("p", "t", SUMMARY, MAIL)
        assert await n.drain(10)
    finally:
        await n.close()
    assert n.counts() == {("email", "retried"): 1, ("email", FAILED): 1, ("email", "backlog"): 0}
