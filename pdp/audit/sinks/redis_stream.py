"""Redis Stream sink: ``XADD`` per record, optional approximate ``MAXLEN ~`` trimming.

Exactly once across outages: each batch is one ``MULTI``/``EXEC`` transaction that appends the
records *and* sets this instance's delivery cursor (``<seq>:<hash>`` of the last record).
When a send fails we cannot know whether the transaction ran (the connection may drop after
Redis applied it), so before the next send the cursor is read back and records up to it are
skipped. The cursor key shares the stream's hash slot (``{stream}``) so this also works on
Redis Cluster. A cursor whose hash does not match our record at that seq belongs to another
chain (e.g. the audit files were reset) and is ignored.

Stream entry fields: ``seq``, ``type``, ``tenant``, ``record`` (the full JSON line, which a
consumer can verify with the same chain rules).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from pdp.audit.chain import Entry

log = structlog.get_logger("pdp.audit")

_TAG = re.compile(r"\{[^{}]+\}")


def cursor_key(stream: str, instance: str) -> str:
    if _TAG.search(stream):
        return f"{stream}:cursor:{instance}"
    return f"{{{stream}}}:cursor:{instance}"


class RedisStreamSink:
    def __init__(self, url: str, stream: str, *, maxlen: int | None = None,
                 instance: str = "pdp", timeout: float = 5.0, cluster: bool = False,
                 client: aioredis.Redis | RedisCluster | None = None) -> None:
        self.name = f"redis-{stream}"
        self.stream = stream
        self.maxlen = maxlen
        self.cursor_key = cursor_key(stream, instance)
        self._client: aioredis.Redis | RedisCluster
        if client is not None:
            self._client = client
        elif cluster:
            self._client = RedisCluster.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout)
        else:
            self._client = aioredis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0))
        self._cursor: tuple[int, str] | None = None

    async def _read_cursor(self) -> tuple[int, str]:
        raw = await self._client.get(self.cursor_key)
        if raw is None:
            return (0, "")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        seq, _, h = text.partition(":")
        return (int(seq), h)

    async def delivered_seq(self) -> int | None:
        """Last seq of ours the stream has (None if it never had any): for back-fill."""
        try:
            self._cursor = await self._read_cursor()
        except BaseException:
            self._cursor = None
            raise
        return self._cursor[0] or None

    def _undelivered(self, entries: Sequence[Entry], cursor: tuple[int, str]) -> list[Entry]:
        cseq, chash = cursor
        for e in entries:
            if e.seq == cseq and chash and e.hash != chash:
                log.warning("redis audit cursor belongs to another chain; ignoring it",
                            key=self.cursor_key, cursor=cseq)
                return list(entries)
        return [e for e in entries if e.seq > cseq]

    async def send(self, entries: Sequence[Entry]) -> None:
        try:
            if self._cursor is None:
                self._cursor = await self._read_cursor()
            todo = self._undelivered(entries, self._cursor)
            if not todo:
                return
            pipe = self._client.pipeline(transaction=True)
            for e in todo:
                kind, tenant = e.tags or (None, None)
                fields: dict[str | bytes, str | bytes | int] = {
                    "seq": e.seq,
                    "type": str(kind or ""),
                    "tenant": str(tenant or ""),
                    "record": e.line.rstrip(b"\n"),
                }
                pipe.xadd(self.stream, fields,  # type: ignore[arg-type]
                          maxlen=self.maxlen, approximate=True)
            last = todo[-1]
            pipe.set(self.cursor_key, f"{last.seq}:{last.hash}")
            await pipe.execute()
            self._cursor = (last.seq, last.hash)
        except BaseException:
            self._cursor = None  # unknown whether it applied: re-read before the next try
            raise

    async def close(self) -> None:
        await self._client.aclose()
