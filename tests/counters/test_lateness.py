"""A reservation Redis runs only after its caller gave up takes nothing (lateness.py): a
paused Redis must not turn the pushes it made wait, and that were denied, into used slots."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from pdp.counters import (
    CounterKind,
    CounterRule,
    CounterSettings,
    CounterStoreUnavailable,
    RedisCounterStore,
)
from pdp.counters.lateness import DRIFT, Lateness
from pdp.counters.redis_store import make_client
from tests.counters.conftest import new_tenant
from tests.support.procs import RedisServer
from tests.support.wait import DEADLINE_S

CAP = CounterRule("cap@v1", CounterKind.DAILY_CAP, "agent:a1", max_count=1, counter_id="cap")
COOL = CounterRule("cool@v1", CounterKind.COOLDOWN, "agent:a1", min_interval_seconds=3600,
                   counter_id="cool")
OTHER = CounterRule("other@v1", CounterKind.COOLDOWN, "agent:zz", min_interval_seconds=1,
                    counter_id="other")


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of this test's own: it is paused, which would stall others sharing it."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGCONT)
        server.close()


def test_the_bound_is_the_tightest_reading_and_grows_slowly() -> None:
    late = Lateness()
    assert late.expires("p", 10.0, 0.05) == ""  # nothing known: no limit sent
    late.observe("p", 10.0, 500_000)  # Redis read 500 000 ms when 10 000 ms local had passed
    assert late.expires("p", 10.0, 0.05) == str(500_000 + 50 + 1)
    late.observe("p", 11.0, 501_003)  # a slower reply (3 ms) bounds less tightly: kept
    assert late._bound["p"] == (490_000.0, 10.0)
    late.observe("p", 12.0, 501_999)  # a tighter one replaces it
    assert late._bound["p"] == (489_999.0, 12.0)
    # 100 s later, the bound allows the Redis clock DRIFT ms per second more
    assert late.expires("p", 112.0, 0.0) == str(int(112_000 + 489_999 + 100 * 1000 * DRIFT) + 1)
    late.observe("p", 20.0, 900_000, stale=True)  # a jump forward: the new reading, whatever
    assert late._bound["p"] == (880_000.0, 20.0)
    assert late.expires("q", 20.0, 1.0) == ""  # per tenant prefix


@pytest.mark.parametrize("learnt", ["from a reply", "at start-up"])
@pytest.mark.parametrize("fast_path", [True, False])
async def test_a_reservation_run_after_its_caller_gave_up_takes_nothing(
        own_redis: RedisServer, learnt: str, fast_path: bool) -> None:
    store = RedisCounterStore(make_client(CounterSettings(url=own_redis.url)),
                              fast_path=fast_path)
    tenant = new_tenant()
    try:
        if learnt == "from a reply":  # an earlier call of this tenant
            assert (await store.peek(tenant, [CAP, COOL], timeout=DEADLINE_S)).allowed
        else:  # the first call of the tenant: the clock read when the scripts were loaded
            assert await store.ping(timeout=DEADLINE_S)
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)
        with pytest.raises(CounterStoreUnavailable):  # the push is denied...
            await store.reserve(tenant, [CAP, COOL], timeout=0.2)
        # The outage lasts on after the caller gave up: Redis stays paused while another
        # call is denied too (resumed within the same millisecond, Redis could still
        # commit: the give-up instant is known to within the round trip of the best clock
        # reading, see lateness.py). That call's own rule does not matter here.
        with pytest.raises(CounterStoreUnavailable):
            await store.reserve(tenant, [OTHER], timeout=0.2)
        # ... and Redis, resumed, runs the queued call after its caller's time was up
        own_redis.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + DEADLINE_S
        while not await store.ping(timeout=1.0):
            assert time.monotonic() < deadline, "Redis did not come back"
            await asyncio.sleep(0.02)
        # the denied push took neither the cap's one slot nor started the cooldown
        assert (await store.reserve(tenant, [CAP, COOL], timeout=DEADLINE_S)).allowed
        again = await store.reserve(tenant, [CAP], timeout=DEADLINE_S)
        assert not again.allowed  # the slot is counted once, by the push that was allowed
    finally:
        await store.close()


async def test_a_redis_clock_that_jumps_forward_costs_one_more_call_not_a_deny(
        own_redis: RedisServer) -> None:
    """The script refuses as late a call whose caller still waits only when the Redis
    clock jumped ahead of the bound; the refusal comes back in time, the bound is renewed
    and the call is sent again: the reservation is made once."""
    shift = {"s": 0.0}
    store = RedisCounterStore(make_client(CounterSettings(url=own_redis.url)),
                              server_time_offset=lambda: shift["s"])
    tenant = new_tenant()
    try:
        assert (await store.peek(tenant, [COOL], timeout=DEADLINE_S)).allowed
        shift["s"] = 600.0  # Redis's clock steps ten minutes ahead
        assert (await store.reserve(tenant, [COOL], timeout=DEADLINE_S)).allowed
        assert not (await store.reserve(tenant, [COOL], timeout=DEADLINE_S)).allowed
    finally:
        await store.close()


async def test_a_reply_that_arrived_while_the_loop_was_late_is_taken(
        redis_srv: RedisServer) -> None:
    """pdp's own loop runs late (a GC pause, CPU throttling): Redis made the reservation
    and its reply is there, but the timeout falls due in the same turn and cancels the
    wait. The reply is taken (the push is allowed, its slot counted once), not dropped
    with the slot it took (a denied push that used up a slot)."""
    import redis as sync_redis

    store = RedisCounterStore(make_client(CounterSettings(url=redis_srv.url)))
    tenant = new_tenant()
    cap = CounterRule("late@v1", CounterKind.DAILY_CAP, "agent:a1", max_count=2,
                      counter_id="late")
    raw = sync_redis.Redis.from_url(redis_srv.url)
    timeout = 0.05

    def stall() -> None:
        """Hold the loop until Redis has made the reservation and the timeout is due."""
        started = time.monotonic()
        deadline = started + DEADLINE_S
        while not raw.keys(f"pdp:{{{tenant}}}:cap:*") or time.monotonic() < started + timeout:
            assert time.monotonic() < deadline, "Redis did not make the reservation"
            time.sleep(0.005)  # not-a-wait: the stall itself, until what it waits for is so
    try:
        assert await store.ping(timeout=DEADLINE_S)
        asyncio.get_running_loop().call_soon(stall)
        assert (await store.reserve(tenant, [cap], timeout=timeout)).allowed
        assert (await store.reserve(tenant, [cap], timeout=DEADLINE_S)).allowed
        assert not (await store.reserve(tenant, [cap], timeout=DEADLINE_S)).allowed
    finally:
        raw.close()
        await store.close()


class _SlowReplies:
    """A TCP proxy in threads (the test's event loop may be the one running late): replies
    from Redis reach the client ``delay_s`` after they left Redis."""

    def __init__(self, upstream_port: int) -> None:
        import socket
        import threading

        self.delay_s = 0.0
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.stopped = False
        self._spawn(self._accept)

    def _spawn(self, fn: object, *args: object) -> None:
        import threading

        t = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        import socket

        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self._spawn(self._pipe, client, up, False)
            self._spawn(self._pipe, up, client, True)

    def _pipe(self, src: object, dst: object, replies: bool) -> None:
        while True:
            try:
                data = src.recv(65536)  # type: ignore[attr-defined]
            except OSError:
                return
            if not data:
                return
            if replies and self.delay_s:
                time.sleep(self.delay_s)  # not-a-wait: the slow network under test
            try:
                dst.sendall(data)  # type: ignore[attr-defined]
            except OSError:
                return

    def close(self) -> None:
        self.stopped = True
        self.listener.close()


async def test_a_reply_just_after_the_timeout_is_taken(
        redis_srv: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped loop (SIGSTOP/SIGCONT: the wait for events returns EINTR, the timer runs
    first) or Redis resumed at the give-up instant: the reply comes just after the timeout.
    The call listens a moment longer (LATE_GRACE_S; widened here so the test does not race)
    and takes it: Redis made the reservation, so the push is allowed and counted once."""
    from pdp.counters import redis_store

    monkeypatch.setattr(redis_store, "LATE_GRACE_S", DEADLINE_S)
    proxy = _SlowReplies(redis_srv.port)
    store = RedisCounterStore(make_client(CounterSettings(url=f"redis://127.0.0.1:{proxy.port}/0")))
    tenant = new_tenant()
    cap = CounterRule("grace@v1", CounterKind.DAILY_CAP, "agent:a1", max_count=2,
                      counter_id="grace")
    try:
        assert await store.ping(timeout=DEADLINE_S)
        proxy.delay_s = 0.2  # the reply leaves Redis at once and arrives after the timeout
        assert (await store.reserve(tenant, [cap], timeout=0.05)).allowed
        proxy.delay_s = 0.0
        assert (await store.reserve(tenant, [cap], timeout=DEADLINE_S)).allowed
        assert not (await store.reserve(tenant, [cap], timeout=DEADLINE_S)).allowed
    finally:
        await store.close()
        proxy.close()
