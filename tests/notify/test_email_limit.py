"""One mail per UTC day per policy, across two notifiers (two sidecars) sharing one Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from pdp.counters import (
    CounterSettings,
    ManualClock,
    MemoryCounterStore,
    RedisCounterStore,
    open_counter_store,
)
from pdp.notify import SENT, SUPPRESSED, EmailChannel, Notifier, NotifySettings
from tests.notify.conftest import SmtpSink
from tests.support.procs import RedisServer, redis_server

SUMMARY = {"decision_id": "d-1", "checkpoint": "push", "reasons": ["DAILY_CAP_EXCEEDED"]}
MAIL = [EmailChannel(to=("oncall@example.com",))]


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as srv:
        yield srv


def settings(sink: SmtpSink) -> NotifySettings:
    return NotifySettings(smtp_port=sink.port, backoff_initial_s=0.01, backoff_max_s=0.05,
                          email_counter_timeout_s=1.0)


@pytest.fixture
async def two_sidecars(
    redis_srv: RedisServer, smtp_sink: SmtpSink
) -> AsyncIterator[tuple[Notifier, Notifier]]:
    stores = [open_counter_store(CounterSettings(url=redis_srv.url)) for _ in range(2)]
    assert all(isinstance(s, RedisCounterStore) for s in stores)
    ns = [Notifier(settings(smtp_sink), s) for s in stores]
    for n in ns:
        await n.start()
    try:
        yield ns[0], ns[1]
    finally:
        for n in ns:
            await n.close()
        for s in stores:
            await s.close()


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


async def test_store_counts_per_utc_day(smtp_sink: SmtpSink) -> None:
    """The counter is a UTC DAILY_CAP: the next UTC day allows one more mail."""
    now = datetime.now(UTC).timestamp()
    clock = ManualClock(now)
    store = MemoryCounterStore(clock)
    n = Notifier(settings(smtp_sink), store)
    await n.start()
    try:
        n.notify("p", "t", SUMMARY, MAIL)
        n.notify("p", "t", SUMMARY, MAIL)
        assert await n.drain(10)
        assert len(smtp_sink.messages) == 1
        # a new sidecar (no local memory) on the next UTC day may send again
        clock.advance(86400)
        n2 = Notifier(settings(smtp_sink), store)
        await n2.start()
        n2.notify("p", "t", SUMMARY, MAIL)
        n2.notify("p", "t", SUMMARY, MAIL)
        assert await n2.drain(10)
        await n2.close()
    finally:
        await n.close()
    assert len(smtp_sink.messages) == 2


async def test_store_outage_falls_back_to_local_limit(smtp_sink: SmtpSink) -> None:
    """Redis down: each sidecar still sends at most one mail per policy per day."""
    with redis_server() as srv:
        store = open_counter_store(CounterSettings(url=srv.url, connect_timeout=0.2,
                                                   op_timeout=0.2))
        srv.kill()
        n = Notifier(settings(smtp_sink), store)
        await n.start()
        try:
            for _ in range(3):
                n.notify("p", "t", SUMMARY, MAIL)
            assert await n.drain(10)
        finally:
            await n.close()
            await store.close()
    assert len(smtp_sink.messages) == 1
    assert n.counts() == {("email", SENT): 1, ("email", SUPPRESSED): 2}


async def test_failed_smtp_is_counted_not_raised() -> None:
    from tests.support.procs import free_port

    n = Notifier(NotifySettings(smtp_port=free_port(), max_attempts=2, backoff_initial_s=0.01,
                                smtp_timeout_s=1.0))
    await n.start()
    try:
        n.notify("p", "t", SUMMARY, MAIL)
        assert await n.drain(10)
    finally:
        await n.close()
    assert n.counts() == {("email", "retried"): 1, ("email", "failed"): 1}
    await asyncio.sleep(0)
