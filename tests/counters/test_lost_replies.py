"""A reply lost with its connection: the client sends the call again (FastRedis and
redis-py both retry once), and Redis had run it. The scripts do a call's work once however
often it arrives (reserve.lua, record.lua: the call's id), so a reservation takes one slot
and an event counts once; before, one allowed push took two slots, and a deploy counted
twice could turn a rollback-rate deny into an allow."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from pdp.counters import (
    CounterEventKind,
    CounterKind,
    CounterRule,
    CounterSettings,
    RedisCounterStore,
)
from pdp.counters.redis_store import make_client
from tests.counters.conftest import new_tenant
from tests.support.procs import RedisServer
from tests.support.wait import DEADLINE_S

CAP = CounterRule("cap@v1", CounterKind.DAILY_CAP, "agent:a1", max_count=2, counter_id="cap")
RATE = CounterRule("rb@v1", CounterKind.ROLLBACK_RATE, "rollout:r1", window_seconds=3600,
                   threshold_percent=40, min_deployments=2, counter_id="rb")


class DroppingProxy:
    """Forwards to Redis; when ``drop`` is set, the next reply is not passed on: the
    client's connection is closed instead (the request did reach Redis and ran)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.drop = False
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    replies: bool, client: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if replies and self.drop:
                    self.drop = False
                    self.dropped += 1
                    client.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(self._pipe(reader, up_writer, False, writer),
                             self._pipe(up_reader, writer, True, writer))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        try:
            yield self.server.sockets[0].getsockname()[1]
        finally:
            self.server.close()


@pytest.mark.parametrize("fast_path", [True, False])
async def test_a_call_sent_again_after_its_reply_was_lost_counts_once(
        redis_srv: RedisServer, fast_path: bool) -> None:
    proxy = DroppingProxy(redis_srv.port)
    async with proxy.running() as port:
        store = RedisCounterStore(make_client(CounterSettings(url=f"redis://127.0.0.1:{port}/0")),
                                  fast_path=fast_path)
        tenant = new_tenant()
        try:
            assert await store.ping(timeout=DEADLINE_S)  # a connection in use, then...
            proxy.drop = True  # ... the reply to the next call is lost with it
            assert (await store.reserve(tenant, [CAP], timeout=DEADLINE_S)).allowed
            assert proxy.dropped == 1
            # the cap of 2 has one slot left: the push was counted once, not twice
            assert (await store.reserve(tenant, [CAP], timeout=DEADLINE_S)).allowed
            assert not (await store.reserve(tenant, [CAP], timeout=DEADLINE_S)).allowed

            # 1 rollback in 2 deploys is 50% > 40%: a deploy counted twice would make it
            # 33% and allow
            await store.record_event(tenant, CounterEventKind.DEPLOY, ["rollout:r1"],
                                     timeout=DEADLINE_S)
            proxy.drop = True
            assert await store.record_event(tenant, CounterEventKind.DEPLOY, ["rollout:r1"],
                                            timeout=DEADLINE_S)
            assert proxy.dropped == 2
            await store.record_event(tenant, CounterEventKind.ROLLBACK, ["rollout:r1"],
                                     timeout=DEADLINE_S)
            verdict = await store.reserve(tenant, [RATE], timeout=DEADLINE_S)
            assert not verdict.allowed and verdict.code == "ROLLBACK_RATE_EXCEEDED", verdict
        finally:
            await store.close()
